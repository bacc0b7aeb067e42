#!/usr/bin/env bash
# The image `sam local invoke --skip-pull-image` runs a provided.al2023 x86_64 function in, built offline.
#
# SAM looks for `public.ecr.aws/lambda/provided:al2023-rapid-x86_64` (its base image plus the Lambda runtime
# interface emulator) and, with --skip-pull-image, uses it as it is. No registry is reachable here, so the image is
# made from files this machine already has: the files of Debian's libc6 and libgcc-s1 packages as installed (all a
# Rust binary links against dynamically), the CA bundle, and the emulator SAM ships in its own package. It is
# imported with `docker import`, labelled with a hash of its inputs, and rebuilt only when they change.
#
# usage: infra/sam-local/image.sh   (from the repository root; needs the venv's SAM CLI and a Docker engine)
set -euo pipefail
cd "$(dirname "$0")/../.."

image=public.ecr.aws/lambda/provided:al2023-rapid-x86_64
packages=(libc6 libgcc-s1)
rie=$(.venv/bin/python -c 'import os, samcli; print(os.path.join(os.path.dirname(samcli.__file__), "local", "rapid", "aws-lambda-rie-x86_64"))')
test -x "$rie" || { echo "no runtime interface emulator at $rie (make venv installs SAM CLI)" >&2; exit 1; }

# What the image is made of: this script, the emulator, and the package versions.
inputs=$( { cat "$0" "$rie"; dpkg-query -W "${packages[@]}"; } | sha256sum | cut -c1-16)
if [ "$(docker image inspect --format '{{index .Config.Labels "fleetlake.inputs"}}' "$image" 2>/dev/null)" = "$inputs" ]; then
  echo "$image is up to date ($inputs)"
  exit 0
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
# The packages' files, paths relative to /, links followed (with a merged /usr, /lib is itself a link): each file
# lands at the path the package gives it, and its folders come with it.
dpkg-query -L "${packages[@]}" | while IFS= read -r path; do
  if [ -f "$path" ]; then printf '%s\n' "${path#/}"; fi
done > "$root.list"
tar -C / -chf - --no-recursion -T "$root.list" | tar -C "$root" -xf -
rm -f "$root.list"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
fi
install -D -m 0755 "$rie" "$root/var/rapid/aws-lambda-rie"
mkdir -p "$root/var/task" "$root/opt" "$root/tmp"
chmod 1777 "$root/tmp"

tar -C "$root" -c . | docker import \
  --change "LABEL fleetlake.inputs=$inputs" \
  --change 'ENTRYPOINT ["/var/rapid/aws-lambda-rie"]' \
  --change 'WORKDIR /var/task' \
  - "$image" >/dev/null
echo "built $image ($inputs, $(docker image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))"
