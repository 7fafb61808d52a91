#!/bin/busybox sh
# The demo service of the qemu profile: busybox httpd serving a page that names the host
# and the image. It runs as PID 1 of its container, so it stops on SIGTERM only because it
# says so (the trap below); the init waits for that before powering off.
set -eu
/bin/busybox mkdir -p /tmp/bin /tmp/www
/bin/busybox --install -s /tmp/bin
export PATH=/tmp/bin:$PATH
cat > /tmp/www/index.html <<PAGE
<!doctype html>
<title>Crust ${CRUST_IMAGE_VERSION}</title>
<h1>Crust ${CRUST_IMAGE_VERSION} on $(hostname)</h1>
<p>Served by busybox httpd in a container run by crun on a read-only, dm-verity verified host.</p>
PAGE
httpd -f -p 80 -h /tmp/www &
pid=$!
trap 'echo "SIGTERM received: stopping httpd"; kill "$pid"; wait "$pid" || true; exit 0' TERM
echo "serving http://$(hostname):80/ (httpd pid $pid)"
wait "$pid"
