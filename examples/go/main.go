// Command pipevisor-go-echo is a pipevisor plugin written with the Go standard library only.
//
// Methods: echo {text} -> {text}; add {a, b} -> a + b.
// Requests are handled one at a time: both methods are instant, so pings get a prompt
// answer. Numbers in comments are sections of protocol/SPEC.md.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"regexp"
	"strconv"
)

const name = "pipevisor-go-echo"

// the protocol versions this plugin speaks
var supported = versionRange{Min: "1.0", Max: "1.0"}

var versionRE = regexp.MustCompile(`^(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})$`) // schemas/defs.json

type versionRange struct {
	Min string `json:"min"`
	Max string `json:"max"`
}

// rpcError is an error answer; handlers return it to refuse a request.
type rpcError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Data    any    `json:"data,omitempty"`
}

func (e *rpcError) Error() string { return e.Message }

func badParams(why string) *rpcError {
	return &rpcError{Code: -32602, Message: "Invalid params: " + why}
}

type plugin struct {
	out          *bufio.Writer
	ready        bool
	maxLineBytes int
}

// send writes one message as one line and flushes it: stdout is a pipe, fully buffered (2.3).
func (p *plugin) send(msg map[string]any) {
	msg["jsonrpc"] = "2.0"
	line, err := json.Marshal(msg) // compact: never a raw newline inside (3.1)
	if err != nil {
		log.Fatalf("cannot encode an answer: %v", err)
	}
	if _, err = p.out.Write(append(line, '\n')); err == nil {
		err = p.out.Flush()
	}
	if err != nil { // 9.1: the host is gone
		log.Print("stdout closed: the host is gone")
		os.Exit(0)
	}
}

func (p *plugin) answer(id json.RawMessage, result any) {
	p.send(map[string]any{"id": id, "result": result})
}

func (p *plugin) refuse(id json.RawMessage, e *rpcError) {
	if id == nil {
		id = json.RawMessage("null")
	}
	p.send(map[string]any{"id": id, "error": e})
}

// parseVersion reads MAJOR.MINOR as a pair of integers; they are never compared as strings (6.4).
func parseVersion(v string) ([2]int, bool) {
	m := versionRE.FindStringSubmatch(v)
	if m == nil {
		return [2]int{}, false
	}
	major, _ := strconv.Atoi(m[1])
	minor, _ := strconv.Atoi(m[2])
	return [2]int{major, minor}, true
}

func less(a, b [2]int) bool { return a[0] < b[0] || (a[0] == b[0] && a[1] < b[1]) }

type handshakeParams struct {
	Protocol         string        `json:"protocol"`
	ProtocolVersions *versionRange `json:"protocolVersions"`
	Limits           struct {
		MaxLineBytes int `json:"maxLineBytes"`
	} `json:"limits"`
}

func (p *plugin) handshake(raw json.RawMessage) (any, *rpcError) {
	var params handshakeParams
	if err := json.Unmarshal(raw, &params); err != nil || params.Protocol != "pipevisor" ||
		params.ProtocolVersions == nil {
		return nil, badParams(`expected protocol "pipevisor" and protocolVersions {min, max}`)
	}
	offer := *params.ProtocolVersions
	offerMin, ok1 := parseVersion(offer.Min)
	offerMax, ok2 := parseVersion(offer.Max)
	if !ok1 || !ok2 {
		return nil, badParams("protocolVersions: not MAJOR.MINOR versions")
	}
	low, _ := parseVersion(supported.Min)
	high, _ := parseVersion(supported.Max)
	if less(low, offerMin) {
		low = offerMin
	}
	if less(offerMax, high) {
		high = offerMax
	}
	if less(high, low) { // no version lies in both ranges
		return nil, &rpcError{Code: -31050,
			Message: fmt.Sprintf("no common protocol version: supported %s..%s, requested %s..%s",
				supported.Min, supported.Max, offer.Min, offer.Max),
			Data: map[string]any{"supported": supported, "requested": offer}}
	}
	if params.Limits.MaxLineBytes > 0 {
		p.maxLineBytes = params.Limits.MaxLineBytes
	}
	return map[string]any{
		"protocolVersion": fmt.Sprintf("%d.%d", high[0], high[1]), // the highest common one
		"plugin":          map[string]any{"name": name, "version": "1.0.0"},
		"methods": map[string]any{
			"echo": map[string]any{"version": "1.0", "description": "Return the text you send"},
			"add":  map[string]any{"version": "1.0", "description": "Add two numbers"},
		},
		"capabilities": map[string]any{"shutdown": true},
	}, nil
}

func echo(raw json.RawMessage) (any, *rpcError) {
	var params struct {
		Text *string `json:"text"`
	}
	if json.Unmarshal(raw, &params) != nil || params.Text == nil {
		return nil, badParams(`expected {"text": string}`)
	}
	return map[string]any{"text": *params.Text}, nil
}

func add(raw json.RawMessage) (any, *rpcError) {
	var params struct {
		A *float64 `json:"a"`
		B *float64 `json:"b"`
	}
	if json.Unmarshal(raw, &params) != nil || params.A == nil || params.B == nil {
		return nil, badParams(`expected {"a": number, "b": number}`)
	}
	return *params.A + *params.B, nil
}

var methods = map[string]func(json.RawMessage) (any, *rpcError){"echo": echo, "add": add}

// jsonType names the JSON type of a raw value by its first byte.
func jsonType(raw json.RawMessage) byte {
	raw = bytes.TrimLeft(raw, " \t\r\n")
	if len(raw) == 0 {
		return 0
	}
	switch c := raw[0]; {
	case c == '"', c == '{', c == '[', c == 'n', c == 't', c == 'f':
		return c
	default:
		return '0' // a number
	}
}

// handle answers one line; it returns false when the plugin must exit (after shutdown).
func (p *plugin) handle(line []byte) bool {
	var msg map[string]json.RawMessage
	if !json.Valid(line) {
		p.refuse(nil, &rpcError{Code: -32700, Message: "Parse error"}) // 3.5
		return true
	}
	if json.Unmarshal(line, &msg) != nil || msg == nil {
		p.refuse(nil, &rpcError{Code: -32600, Message: "Invalid Request"}) // not an object
		return true
	}
	rawID, hasID := msg["id"]
	_, hasResult := msg["result"]
	_, hasError := msg["error"]
	rawMethod, hasMethod := msg["method"]
	if !hasMethod && (hasResult || hasError) {
		return true // a response: this plugin sends no requests
	}
	var method string
	params, hasParams := msg["params"]
	idType, paramsType := jsonType(rawID), jsonType(params)
	if string(msg["jsonrpc"]) != `"2.0"` || json.Unmarshal(rawMethod, &method) != nil ||
		jsonType(rawMethod) != '"' || hasResult || hasError ||
		(hasParams && paramsType != '{' && paramsType != '[') ||
		(hasID && idType != '"' && idType != '0' && idType != 'n') { // 4.2
		if idType != '"' && idType != '0' {
			rawID = nil
		}
		p.refuse(rawID, &rpcError{Code: -32600, Message: "Invalid Request"})
		return true
	}
	if !hasID {
		return true // notifications (pipevisor/cancel included) need no answer
	}
	if !p.ready {
		if method != "pipevisor/handshake" {
			p.refuse(rawID, &rpcError{Code: -31051, Message: "not initialized"}) // 6.1
		} else if result, err := p.handshake(params); err != nil {
			p.refuse(rawID, err)
		} else {
			p.answer(rawID, result)
			p.ready = true
			log.Print("handshake done")
		}
		return true
	}
	switch handler, known := methods[method]; {
	case method == "pipevisor/handshake": // 6.1: once per process; the first one stays in force
		p.refuse(rawID, &rpcError{Code: -32600, Message: "Invalid Request: the handshake happens once"})
	case method == "pipevisor/ping":
		p.answer(rawID, map[string]any{})
	case method == "pipevisor/shutdown": // 7.3: answer, then exit 0
		p.answer(rawID, nil)
		log.Print("shutdown requested: exiting with status 0")
		return false
	case known:
		if result, err := handler(params); err != nil {
			p.refuse(rawID, err)
		} else {
			p.answer(rawID, result)
		}
	default:
		p.refuse(rawID, &rpcError{Code: -32601, Message: "Method not found: " + method})
	}
	return true
}

// readLine returns the next line without its "\n", never holding more than maxLineBytes of
// it (3.3): the rest of a longer line is read and dropped, and tooLong is set.
func (p *plugin) readLine(in *bufio.Reader) (line []byte, tooLong bool, err error) {
	for {
		chunk, err := in.ReadSlice('\n')
		if !tooLong {
			if len(line)+len(chunk) > p.maxLineBytes+1 { // +1: the "\n" does not count
				tooLong, line = true, nil
			} else {
				line = append(line, chunk...)
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		return bytes.TrimSuffix(line, []byte("\n")), tooLong, err
	}
}

func main() {
	log.SetFlags(0) // log goes to stderr, the plugin's log (2.4)
	log.SetPrefix(name + ": ")
	p := &plugin{out: bufio.NewWriter(os.Stdout), maxLineBytes: 16777216}
	in := bufio.NewReaderSize(os.Stdin, 64*1024)
	log.Print("started, waiting for the handshake")
	for {
		line, tooLong, err := p.readLine(in) // 3.2: split at the byte "\n" only
		if tooLong {
			log.Printf("skipped a line longer than %d bytes", p.maxLineBytes)
			p.refuse(nil, &rpcError{Code: -32700, Message: "Parse error: line too long"})
		} else {
			line = bytes.TrimSuffix(line, []byte("\r"))
			if len(bytes.TrimSpace(line)) > 0 && !p.handle(line) {
				os.Exit(0)
			}
		}
		if err == io.EOF { // 9.1: the host is finished with us, or gone
			log.Print("stdin closed: exiting with status 0")
			os.Exit(0)
		} else if err != nil {
			log.Fatalf("reading stdin: %v", err)
		}
	}
}
