// render: Ollama's way of executing a Modelfile TEMPLATE, for tests.
//
// Reads {"template", "system", "prompt", "messages": [{"role", "content"}]} as JSON
// on stdin and writes the rendered prompt to stdout. Like Ollama's
// template.Execute: system messages are joined with "\n\n" into .System,
// consecutive messages of one role are merged, and a template that uses
// .Messages gets the collated conversation; otherwise .System and .Prompt.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Request struct {
	Template string    `json:"template"`
	System   string    `json:"system"`
	Prompt   string    `json:"prompt"`
	Messages []Message `json:"messages"`
}

func collate(msgs []Message) (string, []*Message) {
	var system []string
	var collated []*Message
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if len(collated) > 0 && collated[len(collated)-1].Role == msgs[i].Role {
			collated[len(collated)-1].Content += "\n\n" + msgs[i].Content
		} else {
			collated = append(collated, &msgs[i])
		}
	}
	return strings.Join(system, "\n\n"), collated
}

func main() {
	var req Request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fmt.Fprintln(os.Stderr, "bad request:", err)
		os.Exit(2)
	}
	tmpl, err := template.New("").Option("missingkey=zero").Parse(req.Template)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bad template:", err)
		os.Exit(3)
	}
	msgs := req.Messages
	if len(msgs) == 0 {
		if req.System != "" {
			msgs = append(msgs, Message{"system", req.System})
		}
		if req.Prompt != "" {
			msgs = append(msgs, Message{"user", req.Prompt})
		}
	} else if req.System != "" {
		msgs = append([]Message{{"system", req.System}}, msgs...)
	}
	system, collated := collate(msgs)
	data := map[string]any{"System": system, "Messages": collated, "Prompt": req.Prompt}
	if err := tmpl.Execute(os.Stdout, data); err != nil {
		fmt.Fprintln(os.Stderr, "render:", err)
		os.Exit(4)
	}
}
