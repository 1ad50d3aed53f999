# pbx-edge %pre: the system user, before the files are laid down.
getent group pbx-edge >/dev/null || groupadd -r pbx-edge
getent passwd pbx-edge >/dev/null || \
    useradd -r -g pbx-edge -d /var/lib/pbx-edge -M -s /sbin/nologin \
        -c "pbx-edge call recorder" pbx-edge
exit 0
