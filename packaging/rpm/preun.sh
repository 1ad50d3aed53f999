# pbx-edge %preun ($1: 0 = erase, 1 = upgrade): like %systemd_preun.
if [ "$1" -eq 0 ]; then
    systemctl --no-reload disable --now pbx-edge.service >/dev/null 2>&1 || :
fi
exit 0
