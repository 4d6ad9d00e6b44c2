#!/usr/bin/env bash
# Set everything up and run the main job on the embedded default store: create a sample dataset,
# upload and close it, make a child version, mount the child read-only, show it, unmount.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

sample=$(mktemp -d)
mnt=$(mktemp -d)
id="" child=""
# The sample versions go again at the end (child first): a demo run adds nothing to the user's store
# but packs that the next `dsfs gc` past its grace period reclaims.
cleanup() {
  dsfs unmount "$mnt" >/dev/null 2>&1 || true
  for v in $child $id; do dsfs delete "$v" >/dev/null 2>&1 || true; done
  rm -rf "$sample"; rmdir "$mnt" 2>/dev/null || true
}
trap cleanup EXIT
mkdir -p "$sample/images" "$sample/labels"
for i in $(seq 1 20); do head -c $((4096 * i)) /dev/urandom > "$sample/images/img_$i.bin"; done
for i in $(seq 1 20); do echo "label $i" > "$sample/labels/img_$i.txt"; done
head -c $((8 * 1024 * 1024)) /dev/urandom > "$sample/images/large.bin"

set -x
id=$(dsfs create --project demo --name sample --tags demo)
dsfs add --files "$sample"
dsfs close
dsfs list --id "$id" --filter 'labels/*'
dsfs cat labels/img_7.txt --id "$id"
child=$(dsfs create --project demo --name sample --parents "$id")
echo "label 7, corrected" > "$sample/labels/img_7.txt"
dsfs add --files "$sample/labels/img_7.txt" --dataset-folder labels
dsfs remove --files 'images/img_1.bin'
dsfs close
dsfs list --modified
dsfs search --project demo

# The compute-node side: mount the child (lazy, read-only, verified), look, unmount.
dsfs mount "$child" "$mnt"
dsfs mounts
ls -l "$mnt" "$mnt/labels" | head -20
cat "$mnt/labels/img_7.txt"
du -sh "$mnt"
touch "$mnt/new-file" || echo "(writes are refused: read-only mount)"
dsfs unmount "$mnt"
set +x
echo "demo done; its versions are deleted on exit (\`dsfs gc\` reclaims their space after its grace period)"
