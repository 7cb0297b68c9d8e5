#!/usr/bin/env python3
"""A Kubernetes API for the tests: kmock's emulator, and a thin front that
makes it answer the way a real API server does where the gateway and
kubectl rely on it.

  apiserver.py emulator PORT   kmock's KubernetesEmulator on 127.0.0.1:PORT,
                               with the kinds the gateway and the seed use.
  apiserver.py front PORT BACKEND
                               a proxy on 127.0.0.1:PORT to the emulator.

The front exists because kmock differs from a real API server where they
depend on it (kube-runtime's watcher relists on the first two):
  - objects carry no metadata.resourceVersion, and a list's is "...": the
    front stamps every object it passes with a rising resourceVersion;
  - writes have no optimistic concurrency: the front keeps each object's
    resourceVersion as of its last write (what a GET of it returns) and
    answers 409 Conflict to a PATCH naming another, as a real server does
    (the gateway's Lease election and status writes rely on it);
  - a list has no `kind` (e.g. ServiceList): the front adds it;
  - the core group's discovery names itself "/v1", which kubectl cannot
    map: the front says "v1";
  - no metadata-only answers (`Accept: ...;as=PartialObjectMetadataList`),
    which the gateway uses for pods: the front reduces the objects;
and so that tests can do what only a real server does on its own:
  - `POST /_front/expire` ends every open watch with a 410 Gone error event
    (a watch that fell too far behind), as etcd compaction does;
  - watches get BOOKMARK events every second when they ask for them;
  - `GET /_front/watches` counts the watches open now;
  - `GET /_front/requests` lists every request it passed (method, path,
    watch, User-Agent), to compare a client's calls with its RBAC role.
Killing the front and starting it again on the same port is the API server
going away and coming back; the emulator keeps the objects meanwhile.

Each process prints one line, "listening on http://127.0.0.1:PORT", when it
serves.
"""
import asyncio
import itertools
import json
import sys

import aiohttp
from aiohttp import web

ISTIO = {
    "gateways": "Gateway",
    "virtualservices": "VirtualService",
    "destinationrules": "DestinationRule",
    "serviceentries": "ServiceEntry",
    "workloadentries": "WorkloadEntry",
}
VERBS = ["get", "list", "watch", "create", "patch", "update", "delete"]


async def emulator(port):
    from kmock import KubernetesEmulator, Server

    async with KubernetesEmulator() as k, Server(k, port=port):
        kinds = {}
        for version in ("v1", "v1beta1", "v1alpha3"):
            for plural, kind in ISTIO.items():
                kinds[f"networking.istio.io/{version}/{plural}"] = (kind, True)
        for plural, kind, versions in (("gateways", "Gateway", ("v1", "v1beta1")),
                                       ("tcproutes", "TCPRoute", ("v1", "v1alpha2")),
                                       ("referencegrants", "ReferenceGrant", ("v1", "v1beta1"))):
            for version in versions:
                kinds[f"gateway.networking.k8s.io/{version}/{plural}"] = (kind, True)
        for version in ("v1", "v1beta1"):
            kinds[f"gateway.networking.k8s.io/{version}/gatewayclasses"] = ("GatewayClass", False)
        kinds.update({
            "v1/namespaces": ("Namespace", False),
            "v1/services": ("Service", True),
            "v1/pods": ("Pod", True),
            "discovery.k8s.io/v1/endpointslices": ("EndpointSlice", True),
            "apps/v1/deployments": ("Deployment", True),
            "coordination.k8s.io/v1/leases": ("Lease", True),
        })
        for resource, (kind, namespaced) in kinds.items():
            k.resources[resource] = {"kind": kind, "namespaced": namespaced, "verbs": VERBS}
        print(f"listening on http://127.0.0.1:{port}", file=sys.stderr, flush=True)
        await asyncio.Event().wait()


class Front:
    def __init__(self, backend):
        self.backend = backend
        self.rv = itertools.count(1000)
        self.latest = 1000
        self.watches = set()
        self.kinds = {}
        self.requests = []
        # Object path -> its resourceVersion as of its last write.
        self.versions = {}
        self.writing = asyncio.Lock()

    def stamp(self, obj):
        self.latest = next(self.rv)
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(self.latest)
        return obj

    @staticmethod
    def metadata_only(request):
        return "as=PartialObjectMetadata" in request.headers.get("Accept", "")

    @staticmethod
    def reduce(obj):
        return {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                "metadata": obj.get("metadata", {})}

    async def kind_of(self, session, path):
        """The kind a list path is of, from the emulator's discovery."""
        parts = path.strip("/").split("/")
        if parts[0] == "api":
            gv, rest = parts[1], parts[2:]
        else:
            gv, rest = "/".join(parts[1:3]), parts[3:]
        if len(rest) >= 2 and rest[0] == "namespaces":
            rest = rest[2:]
        if len(rest) != 1:
            return None, gv
        plural = rest[0]
        if gv not in self.kinds:
            prefix = "/api/" if parts[0] == "api" else "/apis/"
            async with session.get(f"{self.backend}{prefix}{gv}") as r:
                doc = await r.json(content_type=None)
            self.kinds[gv] = {x["name"]: x["kind"] for x in doc.get("resources", [])}
        return self.kinds[gv].get(plural), gv

    async def expire(self, request):
        n = len(self.watches)
        for q in list(self.watches):
            q.put_nowait("expire")
        return web.json_response({"expired": n})

    @staticmethod
    def object_key(request, body):
        """The path of the object a request reads or writes, without its
        subresource; None for lists and watches."""
        parts = request.path.rstrip("/").split("/")
        if parts[-1] == "status":
            parts = parts[:-1]
        offset = 3 if parts[1] == "api" else 4  # /api/v1/..., /apis/g/v/...
        rest = parts[offset:]
        if rest[:1] == ["namespaces"]:
            rest = rest[2:]
        if request.method == "POST" and len(rest) == 1:
            try:
                name = json.loads(body)["metadata"]["name"]
            except (ValueError, KeyError, TypeError):
                return None
            return "/".join(parts + [name])
        return "/".join(parts) if len(rest) == 2 else None

    @staticmethod
    def conflict(key):
        return web.json_response({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": "Conflict", "code": 409,
            "message": f"Operation cannot be fulfilled on {key}: the object has been modified; "
                       "please apply your changes to the latest version and try again"},
            status=409)

    async def handle(self, request):
        key = None
        if request.query.get("watch") not in ("1", "true") and not request.path.startswith("/_front/"):
            key = self.object_key(request, await request.read())
        if key is not None and request.method in ("PATCH", "POST", "PUT", "DELETE"):
            async with self.writing:
                try:
                    wanted = json.loads(await request.read())["metadata"]["resourceVersion"]
                except (ValueError, KeyError, TypeError):
                    wanted = None
                if wanted is not None and wanted != self.versions.get(key):
                    self.requests.append({"method": request.method, "path": request.path,
                                          "watch": False,
                                          "agent": request.headers.get("User-Agent", ""),
                                          "conflict": True})
                    return self.conflict(key)
                response = await self.forward(request, key)
                if response.status in (200, 201) and request.method != "DELETE":
                    self.versions[key] = str(next(self.rv))
                    doc = json.loads(response.body)
                    doc.setdefault("metadata", {})["resourceVersion"] = self.versions[key]
                    return web.json_response(doc, status=response.status)
                if request.method == "DELETE":
                    self.versions.pop(key, None)
                return response
        return await self.forward(request, key)

    async def forward(self, request, key):
        if request.path == "/_front/expire":
            return await self.expire(request)
        if request.path == "/_front/requests":
            return web.json_response(self.requests)
        if request.path == "/_front/watches":
            return web.json_response({"open": len(self.watches)})
        self.requests.append({"method": request.method, "path": request.path,
                              "watch": request.query.get("watch") in ("1", "true"),
                              "agent": request.headers.get("User-Agent", "")})
        watching = request.query.get("watch") in ("1", "true")
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("content-type", "accept")}
        if self.metadata_only(request):
            headers["Accept"] = "application/json"
        body = await request.read()
        url = f"{self.backend}{request.path_qs}"
        timeout = aiohttp.ClientTimeout(total=None if watching else 30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.request(request.method, url, headers=headers, data=body) as r:
                if watching and r.status == 200:
                    return await self.stream(request, r, session)
                data = await r.read()
                if r.status != 200 or request.method != "GET":
                    return web.Response(status=r.status, body=data,
                                        content_type=r.content_type)
                doc = json.loads(data)
                if isinstance(doc, dict) and "items" in doc:
                    kind, gv = await self.kind_of(session, request.path)
                    items = [self.stamp(i) for i in doc["items"]]
                    if self.metadata_only(request):
                        items = [self.reduce(i) for i in items]
                        doc["kind"], doc["apiVersion"] = "PartialObjectMetadataList", "meta.k8s.io/v1"
                    else:
                        doc["kind"], doc["apiVersion"] = f"{kind}List", gv
                    doc["items"] = items
                    doc["metadata"] = {"resourceVersion": str(self.latest)}
                elif isinstance(doc, dict) and doc.get("kind") == "APIResourceList":
                    doc["groupVersion"] = doc.get("groupVersion", "").lstrip("/")
                elif isinstance(doc, dict) and "metadata" in doc and key is not None:
                    self.latest = max(self.latest, int(self.versions.setdefault(key, str(next(self.rv)))))
                    doc["metadata"]["resourceVersion"] = self.versions[key]
                    if self.metadata_only(request):
                        doc = self.reduce(doc)
                elif isinstance(doc, dict) and "metadata" in doc:
                    self.stamp(doc)
                    if self.metadata_only(request):
                        doc = self.reduce(doc)
                return web.json_response(doc)

    async def stream(self, request, upstream, session):
        kind, gv = await self.kind_of(session, request.path)
        if self.metadata_only(request):
            kind, gv = "PartialObjectMetadata", "meta.k8s.io/v1"
        out = web.StreamResponse(headers={"Content-Type": "application/json"})
        await out.prepare(request)
        queue = asyncio.Queue()
        self.watches.add(queue)
        bookmarks = request.query.get("allowWatchBookmarks") in ("1", "true")
        reduce = self.metadata_only(request)

        async def pump():
            async for line in upstream.content:
                if line.strip():
                    queue.put_nowait(json.loads(line))
            queue.put_nowait("end")

        async def tick():
            while True:
                await asyncio.sleep(1)
                queue.put_nowait("bookmark")

        tasks = [asyncio.create_task(pump())]
        if bookmarks:
            tasks.append(asyncio.create_task(tick()))
        try:
            while True:
                item = await queue.get()
                if item == "end":
                    break
                if item == "expire":
                    event = {"type": "ERROR", "object": {
                        "kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "reason": "Expired", "code": 410,
                        "message": "too old resource version"}}
                    await out.write((json.dumps(event) + "\n").encode())
                    break
                if item == "bookmark":
                    event = {"type": "BOOKMARK", "object": {
                        "kind": kind, "apiVersion": gv,
                        "metadata": {"resourceVersion": str(self.latest)}}}
                else:
                    event = item
                    obj = self.stamp(event.get("object", {}))
                    if reduce:
                        event["object"] = self.reduce(obj)
                await out.write((json.dumps(event) + "\n").encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.watches.discard(queue)
            for t in tasks:
                t.cancel()
        return out


async def front(port, backend):
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", Front(f"http://127.0.0.1:{backend}").handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"listening on http://127.0.0.1:{port}", file=sys.stderr, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    if sys.argv[1:2] == ["emulator"]:
        asyncio.run(emulator(int(sys.argv[2])))
    elif sys.argv[1:2] == ["front"]:
        asyncio.run(front(int(sys.argv[2]), int(sys.argv[3])))
    else:
        sys.exit(__doc__)
