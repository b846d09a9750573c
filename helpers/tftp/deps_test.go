package tftp_test

import (
	"testing"

	"github.com/nfhelper/nfhelper/internal/deptest"
)

// The package stays pure: no kernel interfaces, no queue I/O.
func TestDeps(t *testing.T) { deptest.Pure(t, "github.com/nfhelper/nfhelper/helpers/tftp") }
