# pbx-edge %postun ($1: 0 = erase, 1 = upgrade): like %systemd_postun_with_restart.
# Erasing keeps the spool /var/lib/pbx-edge (recordings not yet delivered),
# the token and the pbx-edge user; see the operators' guide to remove them.
# (RPM has no purge; the spool is never touched here.) On erase, a spool still
# holding recordings not yet delivered is pointed out.

# The number of recordings in the spool ($1) not yet delivered (as in the
# .deb's postrm, packaging/debian/postrm).
undelivered_count() {
    (
        cd "$1" 2>/dev/null || { echo 0; exit 0; }
        for f in * .*; do
            [ -f "$f" ] || continue
            case "$f" in
                spool.db | spool.db-* | spool.db.corrupt-* | spool.delivered) continue ;;
                .*.wav.part) id=${f#.}; id=${id%.wav.part} ;;
                .*.start.json) id=${f#.}; id=${id%.start.json} ;;
                .*.answer.json) id=${f#.}; id=${id%.answer.json} ;;
                .*.cut) id=${f#.}; id=${id%.cut} ;;
                .*) continue ;;
                *.wav) id=${f%.wav}
                    if [ -f spool.delivered ] && grep -Fqx -- "$id" spool.delivered; then continue; fi ;;
                *.json) id=${f%.json}
                    if [ -f spool.delivered ] && grep -Fqx -- "$id" spool.delivered; then continue; fi ;;
                *) continue ;;
            esac
            printf '%s\n' "$id"
        done | sort -u | wc -l | tr -d ' '
    )
}

if [ "$1" -eq 0 ]; then
    n=$(undelivered_count /var/lib/pbx-edge)
    if [ "$n" -gt 0 ]; then
        cat >&2 <<EOF
pbx-edge: /var/lib/pbx-edge is kept: it holds $n recording(s) not yet
pbx-edge: delivered to the cloud. Install pbx-edge again and start it to
pbx-edge: deliver them; to delete them and the rest of pbx-edge:
pbx-edge:     sudo rm -rf /etc/pbx-edge /var/lib/pbx-edge; sudo userdel pbx-edge
EOF
    fi
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart pbx-edge.service >/dev/null 2>&1 || :
    fi
fi
exit 0
