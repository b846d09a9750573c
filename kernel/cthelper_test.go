package kernel

import (
	"reflect"
	"testing"
)

// TestHelperAdopt: adopting a registration takes the new queue and status
// but never lowers another namespace's expectation limits.
func TestHelperAdopt(t *testing.T) {
	ours := ftpHelper()
	ours.Queue = 300
	ours.Policies = []ExpectPolicy{{Name: "ftp", MaxExpected: 2, Timeout: 120}}
	theirs := ftpHelper()
	theirs.Enabled = false
	theirs.Policies = []ExpectPolicy{{Name: "ftp", MaxExpected: 1, Timeout: 600}}

	got := ours.Adopt(theirs)
	want := ours
	want.Policies = []ExpectPolicy{{Name: "ftp", MaxExpected: 2, Timeout: 600}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("adopting %+v:\n got %+v\nwant %+v", theirs, got, want)
	}
	if ours.Policies[0].Timeout != 120 {
		t.Errorf("Adopt changed its receiver's policies: %+v", ours.Policies)
	}

	// Classes the kernel would not update (other name, other count) are
	// sent as they are: the kernel's EBUSY says why.
	theirs.Policies = []ExpectPolicy{{Name: "other", MaxExpected: 9, Timeout: 900}}
	if got := ours.Adopt(theirs); !reflect.DeepEqual(got.Policies, ours.Policies) {
		t.Errorf("another class name: policies %+v, want %+v", got.Policies, ours.Policies)
	}
	theirs.Policies = append(theirs.Policies, ExpectPolicy{Name: "ftp", MaxExpected: 9, Timeout: 900})
	if got := ours.Adopt(theirs); !reflect.DeepEqual(got.Policies, ours.Policies) {
		t.Errorf("two classes: policies %+v, want %+v", got.Policies, ours.Policies)
	}
}
