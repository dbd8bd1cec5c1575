package engine

// SetBootID makes id this host's boot ID until the returned func runs.
func SetBootID(id string) func() {
	prev := bootID
	bootID = func() string { return id }
	return func() { bootID = prev }
}
