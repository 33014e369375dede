package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
)

// Log holds the logging settings every binary shares: the format and the least level logged.
type Log struct {
	Format string
	Level  string
}

// RegisterFlags declares the settings on fs.
func (l *Log) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&l.Format, "log-format", "json", "json or text")
	fs.StringVar(&l.Level, "log-level", "info", "debug, info, warn or error")
}

// Validate reports a format or level that Logger does not know, naming the flag.
func (l Log) Validate() error {
	var errs []error
	if l.Format != "json" && l.Format != "text" {
		errs = append(errs, fmt.Errorf("--log-format %q: json or text", l.Format))
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(l.Level)); err != nil {
		errs = append(errs, fmt.Errorf("--log-level %q: debug, info, warn or error", l.Level))
	}
	return errors.Join(errs...)
}

// Logger returns a logger writing to w in the format ("text", else JSON) at the level
// (anything Validate refuses is info).
func (l Log) Logger(w io.Writer) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(l.Level)); err != nil {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if l.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}
