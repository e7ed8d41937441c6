"""Shared pytest set-up. Test kinds live in folders: unit/ (pure logic, fakes allowed),
integration/ (real kube-apiserver + etcd), runtime/ (real tiny models on CPU)."""
