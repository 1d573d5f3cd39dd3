package wasihttp

import (
	"fmt"
	"os"
)

// logf writes one line to stderr, which fibhost puts in its log (tagged with route and worker).
// Handlers can do the same with fmt.Fprintln(os.Stderr, …) or the log package.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
}
