package ipvs_test

import (
	"testing"

	"github.com/nfhelper/nfhelper/ipvs"
)

// TestAcksAskedOnce: a control connection asks for its pure ACKs with the
// verdict of the first segment that leaves an edit, and only then.
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
		{seg(rs1, client, isn+9, 107, pshAck, "227 Entering Passive Mode (10,0,0,11,156,64).\r\n"), true},
		{seg(client, rs1, 107, isn+59, ack, ""), false},
		{seg(client, rs1, 107, isn+59, pshAck, "PASV\r\n"), false},
		{seg(rs1, client, isn+59, 113, pshAck, "227 Entering Passive Mode (10,0,0,11,156,65).\r\n"), false},
	}
	for i, s := range steps {
		v := w.Process(s.seg, 0)
		if got := v.Acks.Kind != 0; got != s.acks || got && v.Acks != want {
			t.Errorf("step %d: acks %+v, want %v", i, v.Acks, s.acks)
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
