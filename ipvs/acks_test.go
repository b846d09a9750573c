package ipvs_test

import (
	"fmt"
	"testing"

	"github.com/nfhelper/nfhelper/ipvs"
)

// TestAcksAskedOnce: a control connection asks for its pure ACKs with the
// verdict of the first segment whose edit changes a length, and only then.
func TestAcksAskedOnce(t *testing.T) {
	w := ftpConn(t)
	want := ipvs.Channel{Kind: ipvs.ChannelAcks, Client: client, Server: rs1}
	steps := []struct {
		seg  []byte
		acks bool
	}{
		{seg(rs1, client, isn+1, 101, pshAck, "220 hi\r\n"), false},
		{seg(client, rs1, 101, isn+9, ack, ""), false},
		{seg(client, rs1, 101, isn+9, pshAck, "PASV\r\n"), false},
		// No free text to absorb the longer address.
		{seg(rs1, client, isn+9, 107, pshAck, "227 10,0,0,11,156,64\r\n"), true},
		{seg(client, rs1, 107, isn+31, ack, ""), false},
		{seg(client, rs1, 107, isn+31, pshAck, "PASV\r\n"), false},
		{seg(rs1, client, isn+31, 113, pshAck, "227 10,0,0,11,156,65\r\n"), false},
	}
	for i, s := range steps {
		v := w.Process(s.seg, 0)
		if got := v.Acks.Kind != 0; got != s.acks || got && v.Acks != want {
			t.Errorf("step %d: acks %+v, want %v", i, v.Acks, s.acks)
		}
	}
}

// TestAcksNotAskedForSameLength: a 227 rewritten at its own length (the free
// text gives way) shifts nothing; only many of them unacknowledged, which
// the throttle waits on, need the receiver's ACKs.
func TestAcksNotAskedForSameLength(t *testing.T) {
	w := ftpConn(t)
	cseq, sseq := uint32(101), uint32(isn+1)
	for i := range 20 {
		w.Process(seg(client, rs1, cseq, isn+1, pshAck, "PASV\r\n"), 0) // pipelined: acknowledges no reply
		cseq += 6
		line := fmt.Sprintf("227 Entering Passive Mode (10,0,0,11,156,%d).\r\n", 10+i)
		s := seg(rs1, client, sseq, cseq, pshAck, line)
		v := w.Process(s, 0)
		sseq += uint32(len(line))
		if _, p := payload(t, v, s); len(p) != len(line) || len(v.Open) != 1 {
			t.Fatalf("227 #%d: %q, open %v", i+1, p, v.Open)
		}
		// The client has acknowledged none of them.
		if got, want := v.Acks.Kind == ipvs.ChannelAcks, i+1 == 16; got != want {
			t.Errorf("227 #%d: acks %+v, want %v", i+1, v.Acks, want)
		}
	}
}

// TestAcksAskedWhenWithholding: the first half of a split 227 is withheld,
// and the receiver's ACKs release it.
func TestAcksAskedWhenWithholding(t *testing.T) {
	w := ftpConn(t)
	w.Process(seg(client, rs1, 101, isn+1, pshAck, "PASV\r\n"), 0)
	v := w.Process(seg(rs1, client, isn+1, 107, pshAck, "227 Entering Passive Mode (10,0,"), 0)
	if v.Acks.Kind != ipvs.ChannelAcks || len(v.Open) != 0 {
		t.Fatalf("first half withheld: acks %+v open %v", v.Acks, v.Open)
	}
}

// TestAcksAskedAgainWhenLost: a request that did not reach the kernel is
// made again with the connection's next packet.
func TestAcksAskedAgainWhenLost(t *testing.T) {
	w := ftpConn(t)
	w.Process(seg(client, rs1, 101, isn+1, pshAck, "PASV\r\n"), 0)
	v := w.Process(seg(rs1, client, isn+1, 107, pshAck, "227 10,0,0,11,156,64\r\n"), 0)
	if v.Acks.Kind != ipvs.ChannelAcks {
		t.Fatalf("length-changing 227: acks %+v", v.Acks)
	}
	w.AcksNotOpened(v.Acks)
	if v := w.Process(seg(client, rs1, 107, isn+23, ack, ""), 0); v.Acks.Kind != ipvs.ChannelAcks {
		t.Errorf("after the lost request: acks %+v", v.Acks)
	}
	if v := w.Process(seg(client, rs1, 107, isn+23, ack, ""), 0); v.Acks.Kind != 0 {
		t.Errorf("asked twice: %+v", v.Acks)
	}
}
