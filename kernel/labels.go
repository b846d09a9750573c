package kernel

import (
	"encoding/binary"
	"fmt"

	"github.com/mdlayher/netlink"
)

// Connection labels (CTA_LABELS) carry the compat datapath's stream
// offsets where conntrackd carries them to a backup router: its nft map
// offsets4/6 is carried by nobody. The label bitmap is 128 bits (16 bytes,
// NF_CT_LABELS_MAX_SIZE), sent and stored as the kernel holds it in
// memory. nfhelper owns bytes 8 to 15 (bits 64 to 127 on a little-endian
// host): the client-to-server offset in bytes 8-11, the server-to-client
// one in bytes 12-15, each a little-endian int32 (seqnum.Delta). The other
// bits are the user's: every update masks them out. Both routers of a
// pair must share the byte order (conntrackd copies the bytes).
const (
	ctaLabels     = 22
	ctaLabelsMask = 23

	// LabelsLen is the size of a connection's label bitmap.
	LabelsLen = 16
	// offsetLabelsAt is the first byte of the offsets in the bitmap.
	offsetLabelsAt = 8
)

// OffsetLabels encodes the two stream offsets (by direction: client to
// server, server to client) as labels, and the mask that selects nfhelper's
// bits.
func OffsetLabels(off [2]int32) (labels, mask [LabelsLen]byte) {
	binary.LittleEndian.PutUint32(labels[offsetLabelsAt:], uint32(off[0]))
	binary.LittleEndian.PutUint32(labels[offsetLabelsAt+4:], uint32(off[1]))
	for i := offsetLabelsAt; i < LabelsLen; i++ {
		mask[i] = 0xff
	}
	return labels, mask
}

// OffsetsFromLabels decodes the stream offsets OffsetLabels put in a
// connection's labels (as conntrack reports them: CTA_LABELS); zero where
// the connection has none (no labels, or shorter ones).
func OffsetsFromLabels(labels []byte) [2]int32 {
	if len(labels) < LabelsLen {
		return [2]int32{}
	}
	return [2]int32{
		int32(binary.LittleEndian.Uint32(labels[offsetLabelsAt:])),
		int32(binary.LittleEndian.Uint32(labels[offsetLabelsAt+4:])),
	}
}

// SetOffsetLabels writes the stream offsets into the labels of the
// connection whose original direction is orig, leaving its other label
// bits alone. Being a ctnetlink update, it also has the kernel report the
// connection (an update event), which conntrackd carries. The connection
// must have the labels extension, which the kernel gives only to
// connections created while some rule uses labels (nft.Spec: the table's
// `labels` chain); without it the kernel answers ENOSPC.
func SetOffsetLabels(c *netlink.Conn, orig Tuple, off [2]int32) error {
	labels, mask := OffsetLabels(off)
	ae := encoder()
	if err := encodeTupleAttr(ae, ctaTupleOrig, orig); err != nil {
		return err
	}
	ae.Bytes(ctaLabels, labels[:])
	ae.Bytes(ctaLabelsMask, mask[:])
	attrs, err := ae.Encode()
	if err != nil {
		return err
	}
	if err := updateConntrack(c, orig, attrs); err != nil {
		return fmt.Errorf("set offset labels of %v -> %v: %w", orig.Src, orig.Dst, err)
	}
	return nil
}
