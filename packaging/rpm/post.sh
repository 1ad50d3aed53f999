# pbx-edge %post ($1: 1 = first installation, 2 = upgrade).
# The spool, readable by pbx-edge only.
install -d -m 0700 -o pbx-edge -g pbx-edge /var/lib/pbx-edge
# The cloud token for LoadCredential=: created empty, never overwritten.
if [ ! -e /etc/pbx-edge/token ]; then
    install -m 0600 -o root -g root /dev/null /etc/pbx-edge/token
fi
# Like %systemd_post, but enabled on first installation whatever the presets
# say; not started: the service starts once configured.
if [ "$1" -eq 1 ]; then
    systemctl --no-reload enable pbx-edge.service >/dev/null 2>&1 || :
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
exit 0
