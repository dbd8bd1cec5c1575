// Package widget holds the dashboard's generic building blocks (a table
// with column priorities for small terminals, a form of text, number and
// choice fields). Widgets know nothing about VMs or the backend; they take
// their styles from the caller, which builds them on a session's renderer.
package widget
