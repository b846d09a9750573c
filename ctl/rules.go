package ctl

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/google/nftables"
)

// ListRules lists table inet <table> in the calling process's network
// namespace: `nft list table` where the nft binary exists, else a summary
// of chains and sets read over netlink.
func ListRules(ctx context.Context, table string) (Rules, error) {
	r := Rules{Table: "inet " + table}
	if nft, err := exec.LookPath("nft"); err == nil {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		var stdout, stderr bytes.Buffer
		c := exec.CommandContext(ctx, nft, "list", "table", "inet", table)
		c.Stdout, c.Stderr = &stdout, &stderr
		if err := c.Run(); err != nil {
			return r, fmt.Errorf("nft list table inet %s: %v: %s", table, err, strings.TrimSpace(stderr.String()))
		}
		r.Source, r.Text = "nft", stdout.String()
		return r, nil
	}
	text, err := summary(table)
	if err != nil {
		return r, err
	}
	r.Source, r.Text = "netlink", text
	return r, nil
}

var hookNames = map[nftables.ChainHook]string{
	*nftables.ChainHookPrerouting: "prerouting", *nftables.ChainHookInput: "input", *nftables.ChainHookForward: "forward",
	*nftables.ChainHookOutput: "output", *nftables.ChainHookPostrouting: "postrouting",
}

// summary describes the table from netlink: chains with hook, priority and
// rule count; sets and maps with their element counts.
func summary(table string) (string, error) {
	conn, err := nftables.New()
	if err != nil {
		return "", err
	}
	t, err := conn.ListTableOfFamily(table, nftables.TableFamilyINet)
	if err != nil {
		return "", fmt.Errorf("table inet %s: %w", table, err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n", table)
	fmt.Fprintf(&b, "\t# summary from netlink (no nft binary found)\n")
	sets, err := conn.GetSets(t)
	if err != nil {
		return "", err
	}
	for _, s := range sets {
		kind := "set"
		if s.IsMap {
			kind = "map"
		}
		n := "?"
		if elems, err := conn.GetSetElements(s); err == nil {
			n = fmt.Sprint(len(elems))
		}
		fmt.Fprintf(&b, "\t%s %s { # %s elements }\n", kind, s.Name, n)
	}
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return "", err
	}
	for _, c := range chains {
		if c.Table.Name != table {
			continue
		}
		n := "?"
		if rules, err := conn.GetRules(t, c); err == nil {
			n = fmt.Sprint(len(rules))
		}
		fmt.Fprintf(&b, "\tchain %s {\n", c.Name)
		if c.Hooknum != nil && c.Priority != nil {
			fmt.Fprintf(&b, "\t\ttype %s hook %s priority %d;\n", c.Type, hookNames[*c.Hooknum], int(*c.Priority))
		}
		fmt.Fprintf(&b, "\t\t# %s rules\n\t}\n", n)
	}
	b.WriteString("}\n")
	return b.String(), nil
}
