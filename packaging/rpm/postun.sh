# pbx-edge %postun ($1: 0 = erase, 1 = upgrade): like %systemd_postun_with_restart.
# Erasing keeps the spool /var/lib/pbx-edge (recordings not yet delivered),
# the token and the pbx-edge user; see the operators' guide to remove them.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart pbx-edge.service >/dev/null 2>&1 || :
    fi
fi
exit 0
