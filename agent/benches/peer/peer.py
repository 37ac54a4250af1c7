"""The peer Drover is measured against: what an operator without Drover runs today.

A proxmoxer script that starts every stopped LXC guest of a node, `PARALLEL` at a time, and
waits for each start task the way the bpg/proxmox Terraform provider does: it asks for the
task's status right after the call, then once a second until the task has stopped. It reads
the guest list and each guest's status first, as a script that checks before it acts does.

Usage: peer.py PORT CA_PEM NODE TOKEN_ID SECRET PARALLEL
Prints one JSON line: {"started": N, "seconds": S, "requests": R, "failed": F}.
"""
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from proxmoxer import ProxmoxAPI

POLL_SECONDS = 1.0


def main():
    port, ca, node, token_id, secret, parallel = sys.argv[1:7]
    user, token_name = token_id.split("!", 1)
    api = ProxmoxAPI("127.0.0.1", port=int(port), user=user, token_name=token_name,
                     token_value=secret, verify_ssl=ca, timeout=30)
    requests = 0
    lock = threading.Lock()

    def count(n=1):
        nonlocal requests
        with lock:
            requests += n

    t0 = time.monotonic()
    guests = api.nodes(node).lxc.get()
    count()
    stopped = [g["vmid"] for g in guests if g.get("status") == "stopped"]

    def start(vmid):
        ct = api.nodes(node).lxc(vmid)
        status = ct.status.current.get()
        count()
        if status.get("status") != "stopped":
            return True
        upid = ct.status.start.post()
        count()
        while True:
            task = api.nodes(node).tasks(upid).status.get()
            count()
            if task.get("status") == "stopped":
                return task.get("exitstatus") == "OK"
            time.sleep(POLL_SECONDS)

    with ThreadPoolExecutor(max_workers=int(parallel)) as pool:
        results = list(pool.map(start, stopped))
    seconds = time.monotonic() - t0
    print(json.dumps({"started": len(stopped), "seconds": seconds, "requests": requests,
                      "failed": results.count(False)}))


if __name__ == "__main__":
    main()
