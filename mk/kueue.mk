# Real Kueue for the integration tests (tests/integration/test_kueue_admission.py): sigs.k8s.io/kueue built
# from its Go module into .kueue/bin, its CRDs into .kueue/crds. A no-op when up to date.
.PHONY: kueue kueue-clean

kueue:
	tests/kueue/build.sh

kueue-clean:
	rm -rf .kueue
