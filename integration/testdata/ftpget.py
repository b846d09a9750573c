#!/usr/bin/env python3
"""Fetch one file with ftplib and print {"bytes", "sha256", "content"} as JSON.

Usage: ftpget.py HOST FILE pasv|active [PORT]

The ftplib debug trace (*cmd*/*resp* lines) goes to stderr. For IPv4, passive
mode is PASV and the 227 address is trusted (trust_server_pasv_ipv4_address);
active mode is PORT. For IPv6 ftplib uses EPSV / EPRT by itself.
"""
import ftplib
import hashlib
import json
import sys


def main():
    host, name, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    port = int(sys.argv[4]) if len(sys.argv) > 4 else 21
    out = sys.stdout
    sys.stdout = sys.stderr  # ftplib prints its debug trace with print()
    ftp = ftplib.FTP(timeout=30)
    ftp.trust_server_pasv_ipv4_address = True
    ftp.set_debuglevel(1)
    ftp.connect(host, port)
    ftp.login()  # anonymous
    ftp.set_pasv(mode == "pasv")
    h = hashlib.sha256()
    head = bytearray()
    size = 0

    def cb(b):
        nonlocal size
        h.update(b)
        size += len(b)
        if len(head) < 256:
            head.extend(b[: 256 - len(head)])

    ftp.retrbinary("RETR " + name, cb)
    ftp.quit()
    res = {"bytes": size, "sha256": h.hexdigest()}
    if size <= 256:
        res["content"] = head.decode("utf-8", "replace")
    out.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
