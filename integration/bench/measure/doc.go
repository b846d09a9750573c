// Package measure holds what nfhelper's benchmark programs (integration/bench,
// ftpbench, tftpbench) measure alike, so that their figures mean the same
// thing in every report: CPU times from /proc (cpu.go), the packets a
// router's NFQUEUEs handed to nfhelperd (queue.go) and the summaries over
// rounds (stats.go).
package measure
