#!/usr/bin/env python3
"""Drives pve-sim with real third-party clients and checks every answer against real PVE.

proxmoxer (the Python client most Proxmox scripts use) runs a full LXC lifecycle; Ansible's
community.proxmox modules (`proxmox`, `proxmox_snap`, `proxmox_tasks_info`) run a playbook.
Expectations come from `shared/reference/proxmox-api.md` (cited by section) and the PVE
fixtures in `shared/reference/pve-fixtures/`, never from pve-sim's own output.

Prints one line per check and a closing `N passed, N failed`; exits 1 if anything failed.
"""

import argparse
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

import requests
from proxmoxer import ProxmoxAPI, ResourceException
from proxmoxer.tools import Tasks

NODE = "pve1"
TOKEN_USER = "drover@pve"
TOKEN_NAME = "agent"
SECRET = "5f3c8a52-6d1e-4b7a-9c0f-7e2d1a9b3c4d"
# proxmox-api.md §4: pve-common's UPID regex.
UPID_RE = re.compile(
    r"^UPID:([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?):([0-9A-Fa-f]{8}):([0-9A-Fa-f]{8,9}):"
    r"([0-9A-Fa-f]{8}):([^:\s/]+):([^:\s/]*):([^:\s/]+):$"
)
DIGEST_RE = re.compile(r"^[0-9a-f]{40}$")
LOCK_TIMEOUT = "can't lock file '/run/lock/lxc/pve-config-{}.lock' - got timeout"


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.lock = threading.Lock()

    def check(self, name, ok, detail=""):
        with self.lock:
            if ok:
                self.passed += 1
                print(f"ok      {name}")
            else:
                self.failed += 1
                print(f"FAILED  {name}: {detail}")
        return ok

    def eq(self, name, got, want):
        return self.check(name, got == want, f"got {got!r}, want {want!r}")


C = Checks()


def start_sim(binary, workdir):
    secret_file = os.path.join(workdir, "secret")
    cert_file = os.path.join(workdir, "cert.pem")
    with open(secret_file, "w") as f:
        f.write(SECRET)
    proc = subprocess.Popen(
        [
            binary,
            "--listen", "127.0.0.1:0",
            # Named here, so the expectations do not depend on the simulator's default token.
            "--token-id", f"{TOKEN_USER}!{TOKEN_NAME}",
            "--token-secret-file", secret_file,
            "--write-cert", cert_file,
            "--task-ms", "150",
            # PVE waits 10 s for a config flock; shortened so the lock checks stay quick.
            "--lock-wait-ms", "1500",
            # PVE's 401 delay (§1.3) is kept: 3 s.
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline().strip()
    m = re.match(r"listening https://127\.0\.0\.1:(\d+)$", line)
    if not m:
        proc.kill()
        raise SystemExit(f"pve-sim did not start: {line!r}")
    proc.stdout.readline()  # fingerprint
    return proc, int(m.group(1)), cert_file


class Raw:
    """Plain requests for what proxmoxer hides (total, reason phrases, headers)."""

    def __init__(self, port, cert):
        self.base = f"https://127.0.0.1:{port}/api2/json"
        self.cert = cert
        self.s = requests.Session()
        self.s.verify = cert
        self.auth = {"Authorization": f"PVEAPIToken={TOKEN_USER}!{TOKEN_NAME}={SECRET}"}

    def admin(self, method, path, body):
        """The simulator's own admin API (`/_sim/...`): faults and seeded guests."""
        url = self.base.replace("/api2/json", "/_sim/") + path
        return self.s.request(method, url, headers=self.auth, data=json.dumps(body), timeout=10,
                              verify=self.cert)

    def call(self, method, path, params=None, data=None, headers=None):
        h = dict(self.auth) if headers is None else headers
        # verify is passed per request: a Session's own setting loses to REQUESTS_CA_BUNDLE.
        r = self.s.request(method, self.base + path, params=params, data=data, headers=h,
                           timeout=30, verify=self.cert)
        try:
            body = r.json()
        except ValueError:
            body = None
        return r, body


def wait(api, upid):
    st = Tasks.blocking_status(api, upid, timeout=30, polling_interval=0.05)
    return st or {}


def expect_error(name, fn, status, message=None, errors=None, contains=None):
    try:
        fn()
    except ResourceException as e:
        ok = e.status_code == status
        detail = f"status {e.status_code} {e.status_message!r} content {e.content!r} errors {e.errors!r}"
        if message is not None:
            # proxmoxer: status_message is the standard text, content the reason phrase, which
            # PVE sets to the message's first line (§5).
            ok = ok and e.content == message
        if contains is not None:
            ok = ok and contains in (e.content or "") + (e.status_message or "")
        if errors is not None:
            ok = ok and all((e.errors or {}).get(k) == v for k, v in errors.items())
        return C.check(name, ok, detail)
    return C.check(name, False, "no error")


def load_fixture(fixtures, name):
    with open(os.path.join(fixtures, name)) as f:
        return json.load(f)


# ---------------------------------------------------------------- proxmoxer lifecycle


def proxmoxer_lifecycle(api, raw, fixtures, template):
    node = api.nodes(NODE)
    # §2: proxyto accepts `localhost`; GET /nodes lists the node (ansible's get_node).
    nodes = api.nodes.get()
    C.check("GET /nodes lists the node online", any(
        n.get("node") == NODE and n.get("status") == "online" for n in nodes), nodes)
    C.check("GET /nodes/localhost/lxc is served", isinstance(api.nodes("localhost").lxc.get(), list))
    C.check("version has version/release/repoid",
            {"version", "release", "repoid"} <= set(api.version.get()))
    C.eq("nextid is the first free id (string or int)", int(api.cluster.nextid.get()), 100)

    # Create (§3): UPID at once, config exists with lock=create, task vzcreate.
    upid = node.lxc.create(
        vmid=150, ostemplate=template, hostname="web-150", memory=512, swap=256, cores=1,
        net0="name=eth0,bridge=vmbr0,ip=dhcp", rootfs="local-lvm:8",
        mp0="local-lvm:2,mp=/srv/data", tags=["web", "prod"], unprivileged=1,
    )
    C.check("create returns a UPID (pve-common regex)", bool(UPID_RE.match(upid or "")), upid)
    d = Tasks.decode_upid(upid)
    C.eq("UPID type/id/user", (d["type"], d["id"], d["user"]), ("vzcreate", "150", TOKEN_USER))
    listed = [c for c in node.lxc.get() if c["vmid"] == 150]
    C.check("the new CT is listed with lock=create at once",
            len(listed) == 1 and listed[0].get("lock") == "create", listed)
    st = wait(api, upid)
    C.eq("vzcreate ends OK", st.get("exitstatus"), "OK")
    C.eq("task status splits the token (§1.1)", (st.get("user"), st.get("tokenid")),
         (TOKEN_USER, TOKEN_NAME))
    expect_error("nextid?vmid=150 refuses a taken id (§3)",
                 lambda: api.cluster.nextid.get(vmid=150), 400,
                 errors={"vmid": "VM 150 already exists"})
    C.eq("nextid?vmid=9999 returns it", int(api.cluster.nextid.get(vmid=9999)), 9999)

    # Config (§3 normalizations).
    conf = node.lxc(150).config.get()
    C.eq("memory is an integer", conf.get("memory"), 512)
    C.eq("tags from repeated keys are joined and sorted (RESTHandler)", conf.get("tags"), "prod;web")
    C.eq("rootfs allocated", conf.get("rootfs"), "local-lvm:vm-150-disk-0,size=8G")
    C.eq("mp0 gets its own disk, mp before size", conf.get("mp0"),
         "local-lvm:vm-150-disk-1,mp=/srv/data,size=2G")
    net0 = conf.get("net0", "")
    C.check("net0 normalized (name first, hwaddr BC:24:11 uppercase, type=veth)",
            net0.startswith("name=eth0,") and re.search(r"hwaddr=BC:24:11(:[0-9A-F]{2}){3}", net0)
            and "type=veth" in net0, net0)
    C.check("digest is a SHA-1", bool(DIGEST_RE.match(conf.get("digest", ""))), conf.get("digest"))
    C.check("no lock after create", "lock" not in conf, conf.get("lock"))
    C.eq("ostype from the template", conf.get("ostype"), "debian")

    # Updates and refusals (§3, §5, JSONSchema).
    digest = conf["digest"]
    C.eq("PUT config with the current digest", node.lxc(150).config.put(cores=2, digest=digest), None)
    expect_error("PUT with a stale digest", lambda: node.lxc(150).config.put(cores=3, digest=digest),
                 500, "detected modified configuration - file changed by other user? Try again.")
    expect_error("PUT with no options", lambda: node.lxc(150).config.put(), 500, "no options specified")
    expect_error("boolean 'true' refused (only 0/1)", lambda: node.lxc(150).config.put(onboot="true"),
                 400, errors={"onboot": "type check ('boolean') failed - got 'true'"})
    expect_error("hostname must be a DNS name", lambda: node.lxc(150).config.put(hostname="bad name!"),
                 400, errors={"hostname": "invalid format - value does not look like a valid DNS name\n"})
    expect_error("net0 property string with an unknown key",
                 lambda: node.lxc(150).config.put(net0="name=eth0,bogus=1"), 400,
                 errors={"net0": "invalid format - invalid key in comma-separated list property: bogus\n"})
    expect_error("a repeated non-list key is an ARRAY",
                 lambda: node.lxc(150).config.put(hostname=["a1", "b2"]), 400,
                 errors={"hostname": "type check ('string') failed - got ARRAY"})
    expect_error("unprivileged is read-only", lambda: node.lxc(150).config.put(unprivileged=0), 500,
                 "unable to modify read-only option: 'unprivileged'")
    expect_error("memory cannot be deleted", lambda: node.lxc(150).config.put(delete="memory"), 500,
                 "unable to delete required option 'memory'")
    root_only = load_fixture(fixtures, "http-403-root-only.json")
    expect_error("feature flags other than nesting are root-only for tokens (fixture)",
                 lambda: node.lxc(150).config.put(features="keyctl=1,nesting=1"), 403,
                 root_only["reason"])
    expect_error("the hookscript is root-only",
                 lambda: node.lxc(150).config.put(hookscript="local:snippets/h.sh"), 403,
                 "Permission check failed (changing the hookscript is only allowed for root@pam)")
    C.eq("features=nesting=1 is allowed", node.lxc(150).config.put(features="nesting=1"), None)
    expect_error("cmode enum text (JSONSchema)", lambda: node.lxc(150).config.put(cmode="default"), 400,
                 errors={"cmode": "value 'default' does not have a value in the enumeration 'shell, console, tty'"})

    # HTTP framing (§2): errors close the connection; PVE's reason phrases.
    r, body = raw.call("PUT", "/nodes/pve1/lxc/150/config", data={"onboot": "yes"})
    C.eq("a 400 closes the connection", r.headers.get("Connection", "").lower(), "close")
    C.eq("400 reason phrase", r.reason, "Parameter verification failed.")
    r, _ = raw.call("GET", "/nodes/pve1/lxc/150/status/current")
    C.check("the next request on the session works", r.status_code == 200, r.status_code)
    C.check("a 200 keeps the connection", r.headers.get("Connection", "").lower() != "close",
            r.headers.get("Connection"))

    # Start and running status (§3 list fields; fixture lxc-status-current-running).
    st = wait(api, node.lxc(150).status.start.post())
    C.eq("vzstart OK", st.get("exitstatus"), "OK")
    cur = node.lxc(150).status.current.get()
    want = set(load_fixture(fixtures, "lxc-status-current-running.json")["data"]) - {"tags"}
    C.check("running status has the fixture's fields (pid, pressure*, ha)", want <= set(cur),
            sorted(want - set(cur)))
    C.check("pid is an integer, cpu a number",
            isinstance(cur.get("pid"), int) and isinstance(cur.get("cpu"), (int, float)), cur)
    expect_error("start a running CT", lambda: node.lxc(150).status.start.post(), 500,
                 "CT 150 already running")
    ifaces = node.lxc(150).interfaces.get()
    C.check("interfaces: lo and eth0", [i["name"] for i in ifaces][:2] == ["lo", "eth0"], ifaces)

    # Pending (fixture lxc-pending: typed values, digest row).
    node.lxc(150).config.put(nameserver="10.0.0.54")
    pend = {row["key"]: row for row in node.lxc(150).pending.get()}
    C.eq("nameserver on a running CT is pending", pend.get("nameserver", {}).get("pending"), "10.0.0.54")
    C.check("pending values are typed", isinstance(pend.get("memory", {}).get("value"), int), pend.get("memory"))
    C.check("pending has a digest row", bool(DIGEST_RE.match(str(pend.get("digest", {}).get("value")))),
            pend.get("digest"))

    # Snapshots (§3, §5 idempotency table, fixture lxc-snapshot-list).
    before = node.lxc(150).config.get()["digest"]
    up = node.lxc(150).snapshot.post(snapname="pre-upgrade", description="before apt full-upgrade")
    C.eq("snapshot 'pre-upgrade' (configid allows '-') OK", wait(api, up).get("exitstatus"), "OK")
    snaps = {s["name"]: s for s in node.lxc(150).snapshot.get()}
    cur_snap = snaps.get("current", {})
    C.check("snapshot list: current carries digest, running and parent",
            DIGEST_RE.match(str(cur_snap.get("digest"))) and cur_snap.get("running") == 1
            and cur_snap.get("parent") == "pre-upgrade", cur_snap)
    C.check("the snapshot has snaptime and description",
            isinstance(snaps.get("pre-upgrade", {}).get("snaptime"), int)
            and snaps["pre-upgrade"].get("description", "").startswith("before apt"), snaps.get("pre-upgrade"))
    conf = node.lxc(150).config.get()
    C.eq("config shows parent", conf.get("parent"), "pre-upgrade")
    C.check("digest changes with a snapshot", conf["digest"] != before, before)
    expect_error("PUT with the pre-snapshot digest", lambda: node.lxc(150).config.put(cores=4, digest=before),
                 500, "detected modified configuration - file changed by other user? Try again.")
    expect_error("snapshot name 'current' is reserved", lambda: node.lxc(150).snapshot.post(snapname="current"),
                 500, "unable to use snapshot name 'current' (reserved name)")
    up = node.lxc(150).snapshot.post(snapname="pre-upgrade")
    C.check("an existing name gets a UPID", bool(UPID_RE.match(up)), up)
    C.eq("... and the task fails", wait(api, up).get("exitstatus"), "snapshot name 'pre-upgrade' already used")
    sc = node.lxc(150).snapshot("pre-upgrade").config.get()
    C.check("snapshot config has the description", sc.get("description", "").startswith("before apt"), sc)
    C.check("feature snapshot on lvm-thin", bool(node.lxc(150).feature.get(feature="snapshot").get("hasFeature")))
    node.lxc(150).config.put(cores=4)
    st = wait(api, node.lxc(150).snapshot("pre-upgrade").rollback.post())
    C.eq("rollback OK", st.get("exitstatus"), "OK")
    C.eq("rollback restores the config", node.lxc(150).config.get().get("cores"), 2)
    C.eq("rollback leaves the CT stopped (§3)", node.lxc(150).status.current.get()["status"], "stopped")
    C.eq("delete snapshot OK", wait(api, node.lxc(150).snapshot("pre-upgrade").delete()).get("exitstatus"), "OK")
    C.eq("only current is left", [s["name"] for s in node.lxc(150).snapshot.get()], ["current"])
    up = node.lxc(150).snapshot("pre-upgrade").delete()
    C.eq("deleting a missing snapshot fails inside the task", wait(api, up).get("exitstatus"),
         "snapshot 'pre-upgrade' does not exist")

    # Power idempotency (§5 table).
    expect_error("stop a stopped CT", lambda: node.lxc(150).status.stop.post(), 500, "CT 150 not running")
    expect_error("reboot a stopped CT says VM", lambda: node.lxc(150).status.reboot.post(), 500,
                 "VM 150 not running")
    wait(api, node.lxc(150).status.start.post())
    expect_error("destroy a running CT", lambda: node.lxc.delete(150), 500,
                 "unable to destroy CT 150 - container is running")
    C.eq("shutdown OK", wait(api, node.lxc(150).status.shutdown.post(timeout=10)).get("exitstatus"), "OK")

    # Task list and log (§4; fixtures node-tasks-archive, task-log-vzcreate).
    r, body = raw.call("GET", "/nodes/pve1/tasks", params={"vmid": 150, "limit": 2})
    C.check("task list has total and honours limit",
            body and isinstance(body.get("total"), int) and body["total"] > 2 and len(body["data"]) == 2, body)
    archive_keys = set(load_fixture(fixtures, "node-tasks-archive.json")["data"][0])
    C.eq("task list entries have the fixture's fields", set(body["data"][0]), archive_keys)
    r, e1 = raw.call("GET", "/nodes/pve1/tasks", params={"vmid": 150, "errors": 1})
    C.check("errors=1 lists only failed tasks",
            e1["data"] and all(t["status"] != "OK" for t in e1["data"]), e1)
    r, tf = raw.call("GET", "/nodes/pve1/tasks", params={"typefilter": "vzsnapshot"})
    C.check("typefilter", tf["data"] and all(t["type"] == "vzsnapshot" for t in tf["data"]), tf)
    r, uf = raw.call("GET", "/nodes/pve1/tasks", params={"userfilter": "nobody"})
    C.eq("userfilter", (uf["data"], uf["total"]), ([], 0))
    r, page2 = raw.call("GET", "/nodes/pve1/tasks", params={"vmid": 150, "start": 1, "limit": 1})
    C.eq("start pages", page2["data"][0]["upid"], body["data"][1]["upid"])
    create_upid = [t for t in api.nodes(NODE).tasks.get(vmid=150, limit=100) if t["type"] == "vzcreate"][0]["upid"]
    r, log = raw.call("GET", f"/nodes/pve1/tasks/{create_upid}/log")
    C.check("task log has total, n from 1, TASK OK last",
            log and log.get("total") == len(log["data"]) and log["data"][0]["n"] == 1
            and log["data"][-1]["t"] == "TASK OK", log)
    C.check("vzcreate log looks like PVE's (fixture)",
            any(line["t"].startswith("extracting archive") for line in log["data"])
            and any(line["t"].startswith("Detected container architecture") for line in log["data"]), log)
    r, part = raw.call("GET", f"/nodes/pve1/tasks/{create_upid}/log", params={"start": 1, "limit": 1})
    C.check("task log paging", part["data"] == [log["data"][1]] and part["total"] == log["total"], part)
    expect_error("status of an unparsable UPID", lambda: api.nodes(NODE).tasks("nope").status.get(), 400,
                 errors={"upid": "unable to parse worker upid"})

    # cluster/resources (§3; real capture cv4pve32).
    res = api.cluster.resources.get(type="vm")
    entry = [x for x in res if x.get("vmid") == 150]
    real = set(load_fixture(fixtures, "real-cluster-resources-vm-partial-cv4pve32.json")["data"][0])
    C.check("cluster/resources?type=vm has the real capture's fields",
            entry and real <= set(entry[0]) and "cpus" not in entry[0] and "maxswap" not in entry[0], entry)
    C.check("type=node lists only nodes",
            all(x["type"] == "node" for x in api.cluster.resources.get(type="node")))

    # Destroy (§3 destroy sequence).
    st = wait(api, node.lxc.delete(150, purge=1))
    C.eq("destroy OK", st.get("exitstatus"), "OK")
    expect_error("the CT is gone", lambda: node.lxc(150).config.get(), 500,
                 "Configuration file 'nodes/pve1/lxc/150.conf' does not exist")


def locks(api, raw, template):
    """§5 lock model: sync lock with a wait for PUT config, the flock inside the worker."""
    node = api.nodes(NODE)
    wait(api, node.lxc.create(vmid=151, ostemplate=template, hostname="lock-151", rootfs="local-lvm:4"))
    wait(api, node.lxc(151).status.start.post())
    # A shutdown that never ends holds the flock (a fault of the simulator's admin API).
    raw.admin("PUT", "faults", {"stuck_tasks": ["vzshutdown"]})
    first = node.lxc(151).status.shutdown.post(timeout=60)
    t = time.time()
    second = node.lxc(151).status.shutdown.post(timeout=60)
    C.check("a second shutdown gets a UPID at once (the lock is taken in the worker)",
            bool(UPID_RE.match(second)) and time.time() - t < 1.0, second)
    expect_error("PUT config waits for the flock, then got timeout",
                 lambda: node.lxc(151).config.put(cores=2), 500, LOCK_TIMEOUT.format(151))
    C.check("... after the configured wait", time.time() - t >= 1.4, time.time() - t)
    st = wait(api, second)
    C.eq("the waiting worker fails with PVE's lock message", st.get("exitstatus"), LOCK_TIMEOUT.format(151))
    r, log = raw.call("GET", f"/nodes/pve1/tasks/{second}/log")
    C.check("its log shows 'trying to acquire lock...'",
            any(x["t"].startswith("trying to acquire lock...") for x in log["data"]), log)
    raw.admin("PUT", "faults", {})
    del first
    # A CT locked by a backup: start fails inside the task (§5 lock model 1).
    raw.admin("POST", "guests", {"vmid": 152, "hostname": "backup-152", "lock": "backup"})
    up = node.lxc(152).status.start.post()
    C.check("start of a CT locked 'backup' returns a UPID", bool(UPID_RE.match(up)), up)
    C.eq("... and the task fails", wait(api, up).get("exitstatus"), "CT is locked (backup)")
    expect_error("PUT config on a locked CT fails at once", lambda: node.lxc(152).config.put(cores=2), 500,
                 "CT is locked (backup)")


def auth_and_idle(port, cert):
    """§1.3 401s (delayed ~3 s, no body) and §2 keep-alive idle timeout (5 s)."""
    results = {}

    def bad_secret():
        t = time.time()
        r = requests.get(f"https://127.0.0.1:{port}/api2/json/version", verify=cert, timeout=30,
                         headers={"Authorization": f"PVEAPIToken={TOKEN_USER}!{TOKEN_NAME}=wrong"})
        results["bad"] = (r.status_code, r.reason, r.content, time.time() - t)

    def no_header():
        r = requests.get(f"https://127.0.0.1:{port}/api2/json/version", verify=cert, timeout=30)
        results["none"] = (r.status_code, r.reason, r.content)

    def idle():
        ctx = ssl.create_default_context(cafile=cert)
        with socket.create_connection(("127.0.0.1", port)) as s:
            with ctx.wrap_socket(s, server_hostname="127.0.0.1") as tls:
                req = (f"GET /api2/json/version HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       f"Authorization: PVEAPIToken={TOKEN_USER}!{TOKEN_NAME}={SECRET}\r\n\r\n")
                tls.sendall(req.encode())
                tls.settimeout(5)
                first = tls.recv(65536)
                tls.settimeout(10)
                t = time.time()
                try:
                    rest = tls.recv(65536)
                except (ssl.SSLError, OSError):
                    rest = b""
                results["idle"] = (first.split(b"\r\n")[0], rest, time.time() - t)

    threads = [threading.Thread(target=f) for f in (bad_secret, no_header, idle)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    status, reason, content, took = results["bad"]
    C.eq("401 for a wrong secret: reason and no body", (status, reason, content),
         (401, "Authentication failed!", b""))
    C.check("401 is delayed about 3 s", took >= 2.5, took)
    C.eq("401 without credentials says 'No ticket'", results["none"], (401, "No ticket", b""))
    line, rest, took = results["idle"]
    C.check("an idle keep-alive connection is closed after about 5 s",
            line.startswith(b"HTTP/1.1 200") and rest == b"" and 4.0 <= took <= 7.0, (line, rest, took))


# ---------------------------------------------------------------- Ansible


def ansible(port, cert, collections, template, workdir):
    common = {
        "api_host": "127.0.0.1", "api_port": port, "api_user": TOKEN_USER,
        "api_token_id": TOKEN_NAME, "api_token_secret": SECRET, "validate_certs": True,
    }
    lxc = dict(common, node=NODE, vmid=160, hostname="ans-160", timeout=30)
    create = dict(lxc, ostemplate=template, storage="local-lvm", disk="local-lvm:4", cores=1,
                  memory=256, swap=0, netif={"net0": "name=eth0,bridge=vmbr0,ip=dhcp"},
                  tags=["web", "prod"], state="present")
    update = dict(lxc, cores=2, memory=512, swap=0, onboot=True,
                  netif={"net0": "name=eth0,bridge=vmbr0,ip=dhcp"}, state="present")
    snap = dict(common, vmid=160, snapname="before-upgrade", timeout=30)
    steps = [
        ("create", "community.proxmox.proxmox", create),
        ("create_again", "community.proxmox.proxmox", dict(create, update=False)),
        ("update", "community.proxmox.proxmox", update),
        ("update_again", "community.proxmox.proxmox", update),
        ("start", "community.proxmox.proxmox", dict(lxc, state="started")),
        ("snap", "community.proxmox.proxmox_snap", dict(snap, state="present", description="pre")),
        ("snap_again", "community.proxmox.proxmox_snap", dict(snap, state="present", description="pre")),
        ("rollback", "community.proxmox.proxmox_snap", dict(snap, state="rollback")),
        ("snap_remove", "community.proxmox.proxmox_snap", dict(snap, state="absent")),
        ("start2", "community.proxmox.proxmox", dict(lxc, state="started")),
        ("stop", "community.proxmox.proxmox", dict(lxc, state="stopped")),
        ("tasks", "community.proxmox.proxmox_tasks_info", dict(common, node=NODE)),
        ("remove", "community.proxmox.proxmox", dict(lxc, state="absent", purge=True)),
        ("remove_again", "community.proxmox.proxmox", dict(lxc, state="absent")),
    ]
    # The created config, read right after the create with Ansible's own uri module.
    read_conf = {"url": f"https://127.0.0.1:{port}/api2/json/nodes/{NODE}/lxc/160/config",
                 "headers": {"Authorization": f"PVEAPIToken={TOKEN_USER}!{TOKEN_NAME}={SECRET}"},
                 "ca_path": cert, "return_content": True}
    steps.insert(1, ("create_conf", "ansible.builtin.uri", read_conf))
    out = os.path.join(workdir, "ansible-results.json")
    tasks = [{"name": n, mod: args, "register": n, "ignore_errors": True} for n, mod, args in steps]
    tasks.append({"name": "results", "ansible.builtin.copy": {
        "dest": out, "content": "{{ {" + ", ".join(f"'{n}': {n}" for n, _, _ in steps) + "} | to_json }}"}})
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False,
             "environment": {"REQUESTS_CA_BUNDLE": cert}, "tasks": tasks}]
    book = os.path.join(workdir, "playbook.json")  # JSON is YAML
    with open(book, "w") as f:
        json.dump(play, f)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
               ANSIBLE_PYTHON_INTERPRETER=sys.executable, REQUESTS_CA_BUNDLE=cert)
    bindir = os.path.dirname(sys.executable)
    p = subprocess.run([os.path.join(bindir, "ansible-playbook"), "-i", "localhost,", book],
                       env=env, capture_output=True, text=True, timeout=300)
    if not os.path.exists(out):
        C.check("ansible-playbook ran", False, p.stdout[-3000:] + p.stderr[-2000:])
        return None
    with open(out) as f:
        results = json.load(f)
    if os.environ.get("CONFORMANCE_DEBUG"):
        print(json.dumps(results, indent=1)[:20000])
    return results


def ansible_checks(r):
    def ok(name, changed):
        res = r.get(name, {})
        return C.check(f"ansible {name}: {'changed' if changed else 'unchanged'}",
                       not res.get("failed") and bool(res.get("changed")) == changed,
                       {k: res.get(k) for k in ("failed", "changed", "msg")})

    ok("create", True)
    conf = (r.get("create_conf", {}).get("json") or {}).get("data") or {}
    C.eq("ansible create: tags joined and sorted", conf.get("tags"), "prod;web")
    C.eq("ansible create: rootfs", conf.get("rootfs"), "local-lvm:vm-160-disk-0,size=4G")
    ok("create_again", False)
    ok("update", True)
    ok("update_again", False)
    ok("start", True)
    ok("snap", True)
    ok("snap_again", False)
    ok("rollback", True)
    ok("snap_remove", True)
    ok("start2", True)
    ok("stop", True)
    tasks = r.get("tasks", {}).get("proxmox_tasks", [])
    C.check("ansible tasks_info lists the vzcreate of 160 as OK",
            any(t.get("type") == "vzcreate" and t.get("id") == "160" and t.get("status") == "OK" for t in tasks),
            tasks[:3])
    ok("remove", True)
    ok("remove_again", False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sim", required=True)
    ap.add_argument("--collections", required=True)
    ap.add_argument("--fixtures", required=True)
    a = ap.parse_args()
    started = time.time()
    with tempfile.TemporaryDirectory() as workdir:
        proc, port, cert = start_sim(a.sim, workdir)
        try:
            api = ProxmoxAPI("127.0.0.1", port=port, user=TOKEN_USER, token_name=TOKEN_NAME,
                             token_value=SECRET, verify_ssl=cert, timeout=30)
            raw = Raw(port, cert)
            vztmpl = api.nodes(NODE).storage("local").content.get(content="vztmpl")
            debian = [v["volid"] for v in vztmpl if "debian" in v.get("volid", "")]
            C.check("local storage lists a debian template (ansible's content check)",
                    bool(debian) and all(v.get("content") == "vztmpl" and isinstance(v.get("size"), int)
                                         for v in vztmpl), vztmpl)
            template = debian[0] if debian else "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"
            sections = [
                ("proxmoxer lifecycle", lambda: proxmoxer_lifecycle(api, raw, a.fixtures, template)),
                ("locks", lambda: locks(api, raw, template)),
                ("auth and idle timeout", lambda: auth_and_idle(port, cert)),
                ("ansible", lambda: (lambda r: r and ansible_checks(r))(
                    ansible(port, cert, a.collections, template, workdir))),
            ]
            for name, fn in sections:
                print(f"--- {name}")
                try:
                    fn()
                except Exception as e:  # a crash in a section is a failure, not an abort
                    C.check(f"{name} ran to the end", False, repr(e))
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    print(f"conformance: {time.time() - started:.1f} s")
    print(f"{C.passed} passed, {C.failed} failed")
    return 0 if C.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
