"""Scripts that measure the benchmark itself (perf checks, executor and GPU figures); top layer."""
