"""Targets: the tensors each attention kernel consumes, built from the shared block grid."""
