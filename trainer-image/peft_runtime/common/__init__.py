"""What `train`, `serve` and `agent` share, and nothing else: the HTTP edge and its error family, the
command-line options they have in common. Those three depend on this layer and on the API package, never
on each other."""
