package ipvs_test

import (
	"testing"

	"github.com/nfhelper/nfhelper/nfq/packet"
)

// FuzzProcess feeds a helped FTP control connection a fuzzed run of
// segments, each direction's with fuzzed offsets, flags and payload, and
// raw fuzzed bytes as a packet: nothing may panic, and every packet the
// engine hands back must parse, with a valid TCP checksum.
func FuzzProcess(f *testing.F) {
	f.Add([]byte("227 Entering Passive Mode (10,0,0,11,156,64).\r\n"), []byte("PASV\r\n"), uint32(0), uint32(0), uint8(pshAck), []byte{0x45})
	f.Add([]byte("227-Entering\r\n227 (10,0,0,11,1,2)\r\n"), []byte("PORT 203,0,113,2,4,1\r\n"), uint32(3), uint32(1<<31), uint8(ack), []byte{})
	f.Add([]byte("229 (|||4000|)\r\n"), []byte("EPSV\r\nAUTH TLS\r\n"), uint32(1), uint32(7), uint8(packet.FlagFIN|ack), []byte{0x60, 0, 0})
	f.Fuzz(func(t *testing.T, fromServer, fromClient []byte, skipS, skipC uint32, flags uint8, raw []byte) {
		w := ftpConn(t)
		sseq, cseq := uint32(isn+1), uint32(101)
		for i := 0; i < 3; i++ {
			// In order, then resent, then past a gap.
			for _, pkt := range [][]byte{
				seg(client, rs1, cseq, sseq, pshAck, string(clientPart(fromClient, i))),
				seg(rs1, client, sseq, cseq, flags|ack, string(fromServer)),
				seg(rs1, client, sseq+skipS%64, cseq, pshAck, string(fromServer)),
				seg(client, rs1, cseq-skipC%64, sseq+uint32(len(fromServer)), flags|ack, string(fromClient)),
			} {
				v := w.Process(pkt, 0)
				if v.Packet != nil {
					var p packet.Packet
					if err := packet.Parse(v.Packet, &p); err != nil || !p.TCPChecksumValid() {
						t.Fatalf("verdict packet does not parse or has a bad checksum: %v", err)
					}
				}
			}
			sseq += uint32(len(fromServer))
			cseq += uint32(len(clientPart(fromClient, i)))
		}
		w.Process(raw, 0)
	})
}

// clientPart is the i-th third of b.
func clientPart(b []byte, i int) []byte {
	n := len(b) / 3
	if i == 2 {
		return b[2*n:]
	}
	return b[i*n : (i+1)*n]
}
