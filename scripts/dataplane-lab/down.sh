#!/bin/bash
# Removes the lab: its processes (pid files in $MLAB_STATE) and every mlab-* namespace.
for f in ${MLAB_STATE:-/tmp/mlab}/*.pid; do [ -f $f ] && kill $(cat $f) 2>/dev/null; rm -f $f; done
for ns in $(ip netns list | awk '{print $1}' | grep '^mlab-'); do ip netns del $ns; done
