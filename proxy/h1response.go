package proxy

import (
	"bufio"
	"fmt"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
)

// h1Response is the loop's http.ResponseWriter. It writes what net/http's
// HTTP/1.x server writes for the same handler calls, buffered the same
// way (the body through a 2 KiB buffer, so a short answer gets a
// Content-Length; a longer or flushed one is chunked for HTTP/1.1 and
// ends with the connection for HTTP/1.0; the header finished at the first
// flush: Date, a sniffed Content-Type, Connection), so a client cannot
// tell the two apart. The rules are net/http's (server.go, response and
// chunkWriter) for the requests the loop takes: no request body, no
// Expect, no hijacking.
type h1Response struct {
	hc  *h1Conn
	req *http.Request

	handlerHeader    http.Header
	header           http.Header // a snapshot taken at WriteHeader, see Header
	calledHeader     bool
	wroteHeader      bool // logically (a non-1xx status)
	status           int
	contentLength    int64 // declared; -1 when not
	written          int64
	wants10KeepAlive bool
	wantsClose       bool
	closeAfterReply  bool
	handlerDone      bool
	trailers         []string
	// headerKept: the handler leaves the header map alone from
	// WriteHeader until the header is written (forward), so WriteHeader
	// needs no snapshot of it (see keepHeader).
	headerKept bool

	// sw is serveHTTP's statusWriter for this answer, kept here so that
	// a request on the loop allocates none (see statusWriterFor).
	sw statusWriter
}

// reset makes w the writer of a new request r on its connection, keeping
// the storage of the last answer's header map: an h1Response lives as
// long as its connection and answers one request at a time, and nothing
// holds the map once the last answer was written.
func (w *h1Response) reset(hc *h1Conn, r *http.Request) {
	h := w.handlerHeader
	if h == nil {
		h = make(http.Header)
	} else {
		clear(h)
	}
	*w = h1Response{hc: hc, req: r, handlerHeader: h, contentLength: -1,
		wants10KeepAlive: r.ProtoMinor == 0 && hasToken(r.Header.Get("Connection"), "keep-alive"),
		wantsClose:       r.Close || hasToken(r.Header.Get("Connection"), "close")}
}

// adoptHeader makes h the answer's header map, unless the handler has
// already used its own: forward hands over the VM's answer's map (its
// alone) instead of copying every entry into another map.
func (w *h1Response) adoptHeader(h http.Header) bool {
	if w.wroteHeader || w.header != nil || len(w.handlerHeader) > 0 {
		return false
	}
	w.handlerHeader = h
	w.calledHeader = true // as Header() would have been
	return true
}

// keepHeader promises that the handler does not change the header map
// between WriteHeader and the first flush of the answer, which spares
// WriteHeader its copy of the map (three allocations per request).
func (w *h1Response) keepHeader() { w.headerKept = true }

// chunkWriter is what the body buffer flushes into: it writes the header
// on the first flush and frames chunks.
type chunkWriter struct {
	hc          *h1Conn
	res         *h1Response
	wroteHeader bool
	chunking    bool
}

func (w *h1Response) Header() http.Header {
	if w.header == nil && w.wroteHeader && !w.hc.chunks.wroteHeader {
		w.header = w.handlerHeader.Clone()
	}
	w.calledHeader = true
	return w.handlerHeader
}

func (w *h1Response) WriteHeader(code int) {
	if w.wroteHeader {
		return // superfluous
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	bw := w.hc.bw
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		writeStatusLine(bw, w.req.ProtoAtLeast(1, 1), code)
		_ = w.handlerHeader.WriteSubset(bw, excludedNoBody)
		_, _ = bw.WriteString("\r\n")
		_ = bw.Flush()
		return
	}
	w.wroteHeader = true
	w.status = code
	if w.calledHeader && w.header == nil {
		if w.headerKept {
			w.header = w.handlerHeader
		} else {
			w.header = w.handlerHeader.Clone()
		}
	}
	if cl := headerGet(w.handlerHeader, "Content-Length"); cl != "" {
		v, err := strconv.ParseInt(cl, 10, 64)
		if err == nil && v >= 0 {
			w.contentLength = v
		} else {
			w.handlerHeader.Del("Content-Length")
		}
	}
}

func (w *h1Response) Write(data []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if len(data) == 0 {
		return 0, nil
	}
	if !bodyAllowedForStatus(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	w.written += int64(len(data))
	if w.contentLength != -1 && w.written > w.contentLength {
		return 0, http.ErrContentLength
	}
	return w.hc.body.Write(data)
}

func (w *h1Response) Flush() { _ = w.FlushError() }

func (w *h1Response) FlushError() error {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	err := w.hc.body.Flush()
	if e2 := w.hc.chunks.flush(); err == nil {
		err = e2
	}
	return err
}

// finish ends the answer after the handler returned.
func (w *h1Response) finish() {
	w.handlerDone = true
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	_ = w.hc.body.Flush()
	w.hc.chunks.close()
	_ = w.hc.bw.Flush()
}

func (w *h1Response) shouldReuseConnection() bool {
	if w.closeAfterReply {
		return false
	}
	if w.req.Method != http.MethodHead && w.contentLength != -1 && bodyAllowedForStatus(w.status) && w.contentLength != w.written {
		return false
	}
	return w.hc.werr == nil
}

func (w *h1Response) declareTrailer(k string) {
	k = http.CanonicalHeaderKey(k)
	if !httpguts.ValidTrailerHeader(k) {
		return
	}
	w.trailers = append(w.trailers, k)
}

func (w *h1Response) finalTrailers() http.Header {
	var t http.Header
	for k, vv := range w.handlerHeader {
		if kk, found := strings.CutPrefix(k, http.TrailerPrefix); found {
			if t == nil {
				t = make(http.Header)
			}
			t[kk] = vv
		}
	}
	for _, k := range w.trailers {
		if t == nil {
			t = make(http.Header)
		}
		for _, v := range w.handlerHeader[k] {
			t.Add(k, v)
		}
	}
	return t
}

func (cw *chunkWriter) Write(p []byte) (n int, err error) {
	if !cw.wroteHeader {
		cw.writeHeader(p)
	}
	if cw.res.req.Method == http.MethodHead {
		return len(p), nil // eaten
	}
	bw := cw.hc.bw
	if cw.chunking {
		var buf [20]byte
		b := strconv.AppendInt(buf[:0], int64(len(p)), 16)
		b = append(b, '\r', '\n')
		if _, err = bw.Write(b); err != nil {
			cw.hc.rw.Close()
			return 0, err
		}
	}
	n, err = bw.Write(p)
	if cw.chunking && err == nil {
		_, err = bw.WriteString("\r\n")
	}
	if err != nil {
		cw.hc.rw.Close()
	}
	return n, err
}

func (cw *chunkWriter) flush() error {
	if !cw.wroteHeader {
		cw.writeHeader(nil)
	}
	return cw.hc.bw.Flush()
}

func (cw *chunkWriter) close() {
	if !cw.wroteHeader {
		cw.writeHeader(nil)
	}
	if cw.chunking {
		bw := cw.hc.bw
		_, _ = bw.WriteString("0\r\n")
		if t := cw.res.finalTrailers(); t != nil {
			_ = t.Write(bw)
		}
		_, _ = bw.WriteString("\r\n")
	}
}

// writeHeader finishes the header and writes it (net/http's
// chunkWriter.writeHeader for the requests the loop takes). p is the
// first part of the body: sniffed for a Content-Type, and its length is
// the Content-Length when the handler is already done.
func (cw *chunkWriter) writeHeader(p []byte) {
	cw.wroteHeader = true
	w := cw.res
	keepAlives := !cw.hc.l.shuttingDown()
	isHEAD := w.req.Method == http.MethodHead

	header := w.header
	owned := header != nil
	if !owned {
		header = w.handlerHeader
	}
	var exclude map[string]bool
	del := func(key string) {
		if owned {
			header.Del(key)
			return
		}
		if _, ok := header[key]; !ok {
			return
		}
		if exclude == nil {
			exclude = make(map[string]bool)
		}
		exclude[key] = true
	}
	var set extraHeader

	trailers := false
	for k := range w.header {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			if exclude == nil {
				exclude = make(map[string]bool)
			}
			exclude[k] = true
			trailers = true
		}
	}
	for _, v := range w.header["Trailer"] {
		trailers = true
		foreachHeaderElement(v, w.declareTrailer)
	}

	te := headerGet(header, "Transfer-Encoding")
	hasTE := te != ""

	_, hasCLHeader := header["Content-Length"]
	if w.handlerDone && !trailers && !hasTE && bodyAllowedForStatus(w.status) && !hasCLHeader && (!isHEAD || len(p) > 0) {
		w.contentLength = int64(len(p))
		set.contentLength = strconv.FormatInt(int64(len(p)), 10)
	}
	if w.wants10KeepAlive && keepAlives {
		if headerGet(header, "Content-Length") != "" && headerGet(header, "Connection") == "keep-alive" {
			w.closeAfterReply = false
		}
	}
	hasCL := w.contentLength != -1
	if w.wants10KeepAlive && (isHEAD || hasCL || !bodyAllowedForStatus(w.status)) {
		if _, ok := header["Connection"]; !ok {
			set.connection = "keep-alive"
		}
	} else if !w.req.ProtoAtLeast(1, 1) || w.wantsClose {
		w.closeAfterReply = true
	}
	if headerGet(header, "Connection") == "close" || !keepAlives {
		w.closeAfterReply = true
	}

	code := w.status
	if bodyAllowedForStatus(code) {
		_, haveType := header["Content-Type"]
		if header.Get("Content-Encoding") == "" && !haveType && !hasTE && len(p) > 0 {
			set.contentType = http.DetectContentType(p)
		}
	} else {
		for _, k := range suppressedHeaders(code) {
			del(k)
		}
	}
	if _, ok := header["Date"]; !ok {
		set.date = httpDate(time.Now())
	}
	if hasCL && hasTE && te != "identity" {
		del("Content-Length")
		hasCL = false
	}
	switch {
	case isHEAD || !bodyAllowedForStatus(code) || code == http.StatusNoContent:
		del("Transfer-Encoding")
	case hasCL:
		del("Transfer-Encoding")
	case w.req.ProtoAtLeast(1, 1):
		if hasTE && te == "identity" {
			cw.chunking = false
			w.closeAfterReply = true
			del("Transfer-Encoding")
		} else {
			cw.chunking = true
			set.transferEncoding = "chunked"
			if hasTE && te == "chunked" {
				del("Transfer-Encoding")
			}
		}
	default:
		w.closeAfterReply = true
		del("Transfer-Encoding")
	}
	if cw.chunking {
		del("Content-Length")
	}
	if !w.req.ProtoAtLeast(1, 0) {
		return
	}
	if w.closeAfterReply && (!keepAlives || !hasToken(headerGet(w.header, "Connection"), "close")) &&
		!(w.status == http.StatusSwitchingProtocols && header.Get("Upgrade") != "") {
		del("Connection")
		if w.req.ProtoAtLeast(1, 1) {
			set.connection = "close"
		}
	}

	bw := cw.hc.bw
	writeStatusLine(bw, w.req.ProtoAtLeast(1, 1), code)
	_ = w.header.WriteSubset(bw, exclude)
	set.write(bw)
	_, _ = bw.WriteString("\r\n")
}

// extraHeader is what writeHeader adds, written in net/http's order.
type extraHeader struct {
	contentType, connection, transferEncoding string
	date, contentLength                       string
}

func (h extraHeader) write(bw *bufio.Writer) {
	for _, kv := range [...][2]string{{"Date", h.date}, {"Content-Length", h.contentLength},
		{"Content-Type", h.contentType}, {"Connection", h.connection}, {"Transfer-Encoding", h.transferEncoding}} {
		if kv[1] != "" {
			_, _ = bw.WriteString(kv[0])
			_, _ = bw.WriteString(": ")
			_, _ = bw.WriteString(kv[1])
			_, _ = bw.WriteString("\r\n")
		}
	}
}

// httpDate formats t as the Date header, remembering the last second's.
func httpDate(t time.Time) string {
	sec := t.Unix()
	if c := lastDate.Load(); c != nil && c.sec == sec {
		return c.s
	}
	s := t.UTC().Format(http.TimeFormat)
	lastDate.Store(&cachedDate{sec: sec, s: s})
	return s
}

var lastDate atomic.Pointer[cachedDate]

type cachedDate struct {
	sec int64
	s   string
}

func writeStatusLine(bw *bufio.Writer, is11 bool, code int) {
	if is11 {
		_, _ = bw.WriteString("HTTP/1.1 ")
	} else {
		_, _ = bw.WriteString("HTTP/1.0 ")
	}
	if text := http.StatusText(code); text != "" {
		// Three digits (StatusText knows only 100-599), byte by byte: a
		// formatted buffer would escape through bw, an allocation.
		_ = bw.WriteByte(byte('0' + code/100))
		_ = bw.WriteByte(byte('0' + code/10%10))
		_ = bw.WriteByte(byte('0' + code%10))
		_ = bw.WriteByte(' ')
		_, _ = bw.WriteString(text)
		_, _ = bw.WriteString("\r\n")
		return
	}
	fmt.Fprintf(bw, "%03d status code %d\r\n", code, code)
}

var (
	excludedNoBody = map[string]bool{"Content-Length": true, "Transfer-Encoding": true}
	suppressed304  = []string{"Content-Type", "Content-Length", "Transfer-Encoding"}
	suppressedBody = []string{"Content-Length", "Transfer-Encoding"}
)

func suppressedHeaders(status int) []string {
	switch {
	case status == http.StatusNotModified:
		return suppressed304
	case !bodyAllowedForStatus(status):
		return suppressedBody
	}
	return nil
}

func bodyAllowedForStatus(status int) bool {
	switch {
	case status >= 100 && status <= 199, status == http.StatusNoContent, status == http.StatusNotModified:
		return false
	}
	return true
}

// headerGet is the first value of key, which must be canonical.
func headerGet(h http.Header, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// foreachHeaderElement calls fn for each non-empty element of the list v.
func foreachHeaderElement(v string, fn func(string)) {
	for f := range strings.SplitSeq(v, ",") {
		if f = textproto.TrimString(f); f != "" {
			fn(f)
		}
	}
}
