// chart-render renders a Helm chart's templates the way `helm template` does, for CI checks on
// machines without Helm: Go's text/template (Helm's engine) with the Sprig functions (Debian's
// golang-github-masterminds-sprig-dev) plus Helm's own include, tpl, required, toYaml, fromYaml
// and .Files.Get. Unlike Helm it fails on any reference to a value that does not exist
// (missingkey=error), so a typo in a template is an error rather than an empty string.
//
//	chart-render [-f values.yaml ...] [-set a.b=c ...] [-release NAME] [-namespace NS] CHART_DIR
//
// Writes the rendered manifests to stdout as one multi-document YAML stream.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"gopkg.in/yaml.v3"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func readYAML(path string) (map[string]interface{}, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]interface{}{}
	if err := yaml.Unmarshal(data, &out); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return out, nil
}

// merge overlays src onto dst (maps merge recursively; everything else is replaced).
func merge(dst, src map[string]interface{}) {
	for k, v := range src {
		if sm, ok := v.(map[string]interface{}); ok {
			if dm, ok := dst[k].(map[string]interface{}); ok {
				merge(dm, sm)
				continue
			}
		}
		dst[k] = v
	}
}

// set applies a.b.c=value (value parsed as YAML: numbers, booleans, strings).
func set(values map[string]interface{}, assignment string) error {
	eq := strings.Index(assignment, "=")
	if eq < 0 {
		return fmt.Errorf("-set wants key=value, got %q", assignment)
	}
	var value interface{}
	if err := yaml.Unmarshal([]byte(assignment[eq+1:]), &value); err != nil {
		return err
	}
	keys := strings.Split(assignment[:eq], ".")
	m := values
	for _, k := range keys[:len(keys)-1] {
		next, ok := m[k].(map[string]interface{})
		if !ok {
			return fmt.Errorf("-set %s: %s is not a map in the values", assignment, k)
		}
		m = next
	}
	if _, ok := m[keys[len(keys)-1]]; !ok {
		return fmt.Errorf("-set %s: no such value", assignment)
	}
	m[keys[len(keys)-1]] = value
	return nil
}

type files struct{ dir string }

func (f files) Get(name string) string {
	data, err := os.ReadFile(filepath.Join(f.dir, name))
	if err != nil {
		panic(fmt.Sprintf(".Files.Get %s: %v", name, err))
	}
	return string(data)
}

func toYAML(v interface{}) string {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		panic(err)
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

func main() {
	var valueFiles, sets listFlag
	flag.Var(&valueFiles, "f", "values file overlaid on the chart's values.yaml (repeatable)")
	flag.Var(&sets, "set", "key.path=value (repeatable; the key must exist)")
	release := flag.String("release", "titans", "release name")
	namespace := flag.String("namespace", "default", "namespace")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: chart-render [-f values.yaml] [-set k=v] CHART_DIR")
		os.Exit(2)
	}
	dir := flag.Arg(0)
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "chart-render:", err)
		os.Exit(1)
	}
	chart, err := readYAML(filepath.Join(dir, "Chart.yaml"))
	if err != nil {
		fail(err)
	}
	values, err := readYAML(filepath.Join(dir, "values.yaml"))
	if err != nil {
		fail(err)
	}
	for _, f := range valueFiles {
		overlay, err := readYAML(f)
		if err != nil {
			fail(err)
		}
		merge(values, overlay)
	}
	for _, s := range sets {
		if err := set(values, s); err != nil {
			fail(err)
		}
	}
	context := map[string]interface{}{
		"Values": values,
		"Chart": map[string]interface{}{
			"Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"],
		},
		"Release": map[string]interface{}{
			"Name": *release, "Namespace": *namespace, "Service": "Helm",
		},
		"Files": files{dir},
	}

	root := template.New("chart").Option("missingkey=error")
	funcs := sprig.TxtFuncMap()
	funcs["toYaml"] = toYAML
	funcs["fromYaml"] = func(s string) map[string]interface{} {
		out := map[string]interface{}{}
		if err := yaml.Unmarshal([]byte(s), &out); err != nil {
			panic(err)
		}
		return out
	}
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		err := root.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		err = t.Execute(&buf, data)
		return buf.String(), err
	}
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil || v == "" {
			return nil, fmt.Errorf("%s", msg)
		}
		return v, nil
	}
	root.Funcs(funcs)

	paths, _ := filepath.Glob(filepath.Join(dir, "templates", "*"))
	sort.Strings(paths)
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			fail(err)
		}
		if _, err := root.New(filepath.Base(p)).Parse(string(data)); err != nil {
			fail(err)
		}
	}
	var out bytes.Buffer
	for _, p := range paths {
		name := filepath.Base(p)
		if strings.HasPrefix(name, "_") || !strings.HasSuffix(name, ".yaml") {
			continue
		}
		var buf bytes.Buffer
		func() {
			defer func() {
				if r := recover(); r != nil {
					fail(fmt.Errorf("%s: %v", name, r))
				}
			}()
			if err := root.ExecuteTemplate(&buf, name, context); err != nil {
				fail(err)
			}
		}()
		for _, doc := range strings.Split(buf.String(), "\n---") {
			if strings.TrimSpace(doc) == "" {
				continue
			}
			fmt.Fprintf(&out, "---\n# Source: templates/%s\n%s\n", name, strings.Trim(doc, "\n"))
		}
	}
	os.Stdout.Write(out.Bytes())
}
