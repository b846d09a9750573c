package nft

import "errors"

// ErrChannel reports a data-channel request the ruleset cannot express.
var ErrChannel = errors.New("nft: unsupported data channel")
