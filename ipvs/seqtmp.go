package ipvs

import "github.com/nfhelper/nfhelper/nfq/seqnum"

// TEMPORARY (step 0 of issue 13): the stream code moves to seqnum's types.
func seqAfter(a, b uint32) bool  { return seqnum.Value(a).After(seqnum.Value(b)) }
func seqBefore(a, b uint32) bool { return seqnum.Value(a).Before(seqnum.Value(b)) }
