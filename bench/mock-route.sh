# Sourced by the proxy benchmarks: what they share about serving a mock
# upstream through switchyard and measuring a process's CPU.

# The one-route policy that sends every request to the mock upstream on
# port $2, as policy version $1.
mock_policy() {
  cat <<TOML
version = "$1"
default_route = "mock"

[[routes]]
name = "mock"
backend = "upstream"
model = "mock"
url = "http://127.0.0.1:$2/v1"
allowed_classes = ["public", "internal"]
TOML
}

# CPU clock ticks (user + system) process $1 has used; CLK_TCK to a second.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
