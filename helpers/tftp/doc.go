// Package tftp parses TFTP (RFC 1350) requests as the helper sees them.
//
// A client starts a transfer with a read request (RRQ, opcode 1) or a write
// request (WRQ, opcode 2) to port 69. The server does not answer from port
// 69: it picks a new port, its transfer ID, and sends the rest of the
// transfer from there to the client's port. That answer belongs to no flow
// the router has seen, so the request is the one datagram the router must
// understand; the DATA, ACK, ERROR and OACK that follow travel between the
// two transfer IDs like any UDP.
//
// Options (RFC 2347; blksize RFC 2348, tsize and timeout RFC 2349,
// windowsize RFC 7440) ride in the request. The helper passes them through
// untouched and reads them only to describe the transfer.
package tftp
