#!/bin/sh
# A worker that leaves a daemon behind, as a careless app does: a subshell starts
# `setsid sh` in the background and exits at once, so the daemon is re-parented
# away from the worker and sits in a session (and process group) of its own —
# out of reach of a signal to the worker's group. The daemon writes its pid to
# $ESCAPE_DIR/daemon.<worker pid> and sleeps, holding the inherited listening
# socket (fd 3) like a real one would hold the port.
(setsid sh -c 'echo $$ > "$1.tmp"; mv "$1.tmp" "$1"; exec sleep 1000' sh "$ESCAPE_DIR/daemon.$$" &)
trap 'exit 0' TERM
while :; do
    sleep 1 &
    wait $!
done
