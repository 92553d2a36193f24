# Shared helpers for scripts/*.sh (sourced, not run).

# Debian packages transcast builds and runs with.
RUNTIME_PACKAGES=(
  pkg-config
  libgstreamer1.0-dev
  libgstreamer-plugins-base1.0-dev
  gstreamer1.0-plugins-base
  gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly
  gstreamer1.0-libav
  gstreamer1.0-tools
  # textoverlay (pango) writes the stream's name on its fallback slate.
  gstreamer1.0-x
)

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Installs the given Debian packages unless all are present already.
ensure_packages() {
  local missing=()
  for p in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$p")
    fi
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "==> installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
}

# Makes sure cargo has rustfmt and clippy (rustup toolchains may lack them).
ensure_rust_tools() {
  command -v cargo >/dev/null || { echo "cargo not found: install the Rust toolchain (rustup) first" >&2; exit 1; }
  if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add rustfmt clippy
  fi
}

# Real browsers driven over WebDriver (tests/browsers.rs, scripts/bench.sh --player): Debian's Firefox ESR and
# Chromium with its driver, and geckodriver from crates.io.
ensure_browsers() {
  ensure_packages firefox-esr chromium chromium-driver
  export PATH="$HOME/.cargo/bin:$PATH"
  if ! command -v geckodriver >/dev/null; then
    echo "==> cargo install geckodriver (about 2 minutes)"
    cargo install --locked geckodriver
  fi
}

# For the benchmark scripts: runtime packages, a raised open-file limit (for this shell and what it starts), and
# a release build.
prepare_release_bench() {
  ensure_packages "${RUNTIME_PACKAGES[@]}"
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  cargo build --release --locked --bins
}
