package api

import (
	_ "embed"
	"net/http"

	"github.com/minionsdev/minions/service"
)

// OpenAPI is the API's OpenAPI 3 document.
//
//go:embed openapi.yaml
var OpenAPI []byte

func serveOpenAPI(w http.ResponseWriter, r *http.Request, _ service.Caller) {
	w.Header().Set("Content-Type", "application/yaml")
	w.Write(OpenAPI)
}
