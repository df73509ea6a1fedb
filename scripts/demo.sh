#!/usr/bin/env bash
# The main job: get this host ready, boot the default microVM, run commands in it,
# take it down. Safe to run again (the second run reuses the cached kernel and image).
source "$(dirname "$0")/lib.sh"
mvmctl=bin/mvmctl
"$mvmctl" bootstrap
name="demo-$$"
trap '"$mvmctl" down "$name" >/dev/null 2>&1 || true' EXIT
"$mvmctl" up -d --name "$name"
echo "+ mvmctl exec $name -- uname -a"
"$mvmctl" exec "$name" -- uname -a
echo "+ mvmctl exec $name -- cat /proc/mounts"
"$mvmctl" exec "$name" -- cat /proc/mounts
echo "+ mvmctl down $name"
"$mvmctl" down "$name"
trap - EXIT
