// Package api is the HTTP JSON API of a Minions daemon and its typed
// client.
//
// The server (NewHandler) exposes every operation of the service façade
// under /v1, described by the OpenAPI document openapi.yaml (served at
// /v1/openapi.yaml; a test keeps it and the routes in step). It serves the
// same handler on the daemon's unix socket, where a peer with uid 0 is the
// admin "root" (SO_PEERCRED, see ConnContext), and on TCP.
//
// Authentication: `Authorization: Bearer <token>` with a token made by
// `minions token create` (or one of Config.AdminTokens, which act as root).
// Any other request is 401 with code "unauthenticated". Authorization is
// the service's: every VM has an owner, others' VMs are reported as not
// found.
//
// Errors are `{"error":{"code":"not_found","message":"..."}}`; the code is
// errs.Code and the HTTP status is mapped from it in exactly one place
// (Status). The client maps codes back to error classes, so the CLI exits
// with the same codes whether it runs in-process or through this API.
//
// Long operations (create, start, restart, snapshot create and restore,
// copy) stream NDJSON when the client sends `Accept: application/x-ndjson`:
// `{"step":"boot"}` lines, then `{"result":...}` or `{"error":{...}}`. The
// HTTP status is chosen when the first step is reported, so a request that
// fails before any step (authorization, validation) still gets its real
// status. Exec is an HTTP/1.1 upgrade to a framed stream (see exec.go);
// `logs?follow=true` is a chunked stream.
//
// The handler is safe for concurrent use.
package api
