package api

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/minionsdev/minions/internal/errs"
)

// Error is the body of every error response and stream error line.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

type errorBody struct {
	Error Error `json:"error"`
}

// Status is the HTTP status for an error code: the one place the API maps
// error classes to statuses.
func Status(code string) int {
	switch code {
	case "not_found":
		return http.StatusNotFound
	case "already_exists", "failed_precondition":
		return http.StatusConflict
	case "invalid_argument":
		return http.StatusBadRequest
	case "permission_denied":
		return http.StatusForbidden
	case "unauthenticated":
		return http.StatusUnauthorized
	case "unavailable":
		return http.StatusServiceUnavailable
	case "resource_exhausted":
		return http.StatusTooManyRequests
	}
	return http.StatusInternalServerError
}

func errorOf(err error) Error {
	return Error{Code: errs.Code(err), Message: err.Error()}
}

// writeError writes err as a JSON error response.
func writeError(w http.ResponseWriter, err error) {
	e := errorOf(err)
	writeJSON(w, Status(e.Code), errorBody{Error: e})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// asError turns a received error body back into an error of its class, so
// errors.Is(err, errs.NotFound) and errs.ExitCode work on the client as on
// the server.
func (e Error) asError() error {
	if c := errs.FromCode(e.Code); c != nil {
		return errs.New(c, "%s", e.Message)
	}
	if e.Message == "" {
		e.Message = "internal error"
	}
	return errors.New(e.Message)
}
