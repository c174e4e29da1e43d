"""kmock's KubernetesEmulator plus the API-server behaviours the operator relies on and kmock lacks."""

from __future__ import annotations

import collections
import itertools
import uuid
from datetime import UTC, datetime
from typing import Any

import attrs
import jsonpatch
import kmock
from kmock._internal.dicts import merge_patch_dict
from kmock._internal.k8s import KubernetesError, KubernetesObjectConflictError, KubernetesObjectNotFoundError

__all__ = ["Access", "ApiServerEmulator"]

# The RBAC verb an API server checks for each request kind (kubernetes.io/docs/reference/access-authn-authz/
# authorization/#determine-the-request-verb): PATCH is `patch`; kmock has no PUT (`update`).
_VERBS = {
    kmock.action.LIST: "list",
    kmock.action.WATCH: "watch",
    kmock.action.FETCH: "get",
    kmock.action.CREATE: "create",
    kmock.action.UPDATE: "patch",
    kmock.action.DELETE: "delete",
}


@attrs.frozen(order=True)
class Access:
    """One RBAC grant a request needed: API group, resource[/subresource], verb, and its namespace or None."""

    group: str
    resource: str
    verb: str
    namespace: str | None


@attrs.frozen
class PatchTestFailedError(KubernetesError):
    """A JSON patch whose `test` op failed: the API server answers 422, kmock would answer 500."""

    status: int = 422
    reason: str = "Invalid"
    message: str = "the patch's test operation failed: the object has a newer resourceVersion"


class ApiServerEmulator(kmock.KubernetesEmulator):
    """Use with ``pytest.mark.kmock(cls=ApiServerEmulator)``.

    - Every write bumps ``metadata.resourceVersion``; a change of ``spec`` bumps ``metadata.generation``
      (kstatus and ``kubectl wait`` compare it with ``status.observedGeneration``). kmock sets neither.
    - A JSON patch whose ``test`` op fails gets 422 Invalid, as kopf expects of an API server.
    - Every created object gets a ``metadata.uid`` unless it brings one (a re-created object is a new object),
      and a ``metadata.creationTimestamp`` (RFC 3339, whole seconds, as the API server writes it).
    - ``metadata.generateName`` gets a unique suffix on create (kopf names its Events this way; plain
      kmock stores them all under one empty name and refuses every Event after the first).
    - `refuse` answers writes with 409 Conflict and changes nothing, as an API server refuses a stale
      write. A kmock DSL reaction cannot: kmock applies intercepted writes anyway.
    - LIST and WATCH honour an equality ``labelSelector`` (``a=b,c=d``); kmock returns every object. A LIST names its
      kind (``ClusterKopfPeeringList``) and apiVersion, which client-go requires (Helm's ``lookup``).
    - Reads and writes of one object are dictionary look-ups; kmock scans every object for each.
    - `accessed` records the RBAC grant (`Access`) each authenticated resource request needed, as an API
      server's authorizer sees it: the operator's, which carry its bearer token, not the test's own (which play
      the user and KubeRay, unauthenticated). Discovery (/api, /apis) is left out (`system:discovery` allows it).
    - `writes` counts the writes per path (a test proves an object is not rewritten every poll).
    - ``forget = True`` keeps only the newest request and object version. kmock 0.8 matches every new
      request against every recorded one (O(n^2) overall), so at benchmark scale the emulator, not the
      operator, would be what is measured.
    """

    _suffixes = itertools.count(1)
    _versions = itertools.count(1000)
    forget = False

    def refuse(self, method: str, resource_plural: str, *, times: int) -> list[str]:
        """Refuse the next `times` METHOD requests on the resource; returns the paths refused so far."""
        self._refusal = (method, f"/{resource_plural}/", times, [])
        return self._refusal[3]

    def _version(self, request: Any, obj: Any) -> None:
        """Add a new resourceVersion, and a new generation if the spec changes, to the patch itself."""
        version = str(next(self._versions))
        generation = int(obj.get("metadata", {}).get("generation") or 0)
        if isinstance(request.data, dict):  # a merge patch
            spec_patch = request.data.get("spec")
            spec = obj.get("spec") or {}
            # kmock's own merge, so the preview is exactly what it is about to store.
            changes_spec = isinstance(spec_patch, dict) and merge_patch_dict(spec, spec_patch) != spec
            meta = request.data["metadata"] = request.data.get("metadata") or {}
            meta["resourceVersion"] = version
            if changes_spec and request.subresource is None:
                meta["generation"] = generation + 1
        elif isinstance(request.data, list):  # a JSON patch; its `test` ops check the old version first
            request.data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
            if request.subresource is None and any(op.get("path", "").startswith("/spec") for op in request.data):
                request.data.append({"op": "add", "path": "/metadata/generation", "value": generation + 1})

    def _exact(self, request: Any) -> Any:
        key = (request.resource, request.namespace, request.name)
        return self._objects[key] if request.name and key in self._objects else None

    async def _serve_fetch(self, request: Any) -> Any:
        obj = self._exact(request)
        if obj is None and request.name and request.resource is not None:
            # kmock's keys compare by (group, version, plural, namespace, name): a missing key is a 404, with no
            # scan of every object (an operator GETs each object it should own before creating it).
            raise KubernetesObjectNotFoundError()
        if obj is None:
            return await super()._serve_fetch(request)
        if obj.deleted:
            raise KubernetesObjectNotFoundError()
        return obj.raw

    async def _serve_create(self, request: Any) -> Any:
        meta = request.data.get("metadata", {}) if isinstance(request.data, dict) else {}
        key = (request.resource, request.namespace or meta.get("namespace"), meta.get("name"))
        if key in self._objects:  # created in _handle: no scan of every object
            return self._objects[key].raw
        return await super()._serve_create(request)

    async def _serve_update(self, request: Any) -> Any:
        obj = self._exact(request)
        return await super()._serve_update(request) if obj is None else obj.last.raw

    async def _serve_list(self, request: Any) -> Any:
        namespace, resource = request.namespace, request.resource
        items = [
            obj.raw
            for (res, ns, _), obj in self._objects.items()
            if (namespace is None or ns == namespace) and res == resource and not obj.deleted
        ]
        listing = {"metadata": {"resourceVersion": "..."}, "items": items} if items else None
        if listing is None:
            listing = await super()._serve_list(request)  # kmock's answer for an unknown resource (404)
        listing["items"] = [item for item in listing["items"] if _selected(item, request.params)]
        # A list names its kind, as every API server's does (client-go's decoder, Helm's `lookup`, refuses one
        # without); kmock leaves it out.
        info = self.resources.get(resource) if resource is not None else None
        if info is not None and info.kind:
            group_version = f"{resource.group}/{resource.version}" if resource.group else resource.version
            listing.update(apiVersion=group_version, kind=f"{info.kind}List")
        return listing

    async def _serve_watch(self, request: Any) -> Any:
        async for event in super()._serve_watch(request):
            if not isinstance(event, dict) or _selected(event.get("object") or {}, request.params):
                yield event

    @property
    def accessed(self) -> set[Access]:
        """The grants the requests so far needed."""
        return self.__dict__.setdefault("_accessed", set())  # type: ignore[no-any-return]

    @property
    def writes(self) -> collections.Counter[str]:
        """The writes (POST, PUT, PATCH, DELETE) so far, by URL path: the operator's and the test's own."""
        return self.__dict__.setdefault("_writes", collections.Counter())  # type: ignore[no-any-return]

    def _record(self, request: Any) -> None:
        if request.method in ("POST", "PUT", "PATCH", "DELETE"):
            self.writes[request.url.path] += 1
        resource = request.resource
        if not request.headers.get("Authorization") or request.action not in _VERBS:
            return
        if resource is None or not getattr(resource, "plural", None):
            return
        plural = f"{resource.plural}/{request.subresource}" if request.subresource else resource.plural
        self.accessed.add(Access(resource.group or "", plural, _VERBS[request.action], request.namespace))

    async def _handle(self, request: Any) -> Any:
        self._record(request)
        if self.forget:
            del self._requests[:-1]
        method, segment, times, refused = getattr(self, "_refusal", ("", "", 0, []))
        if len(refused) < times and request.method == method and segment in request.url.path:
            refused.append(request.url.path)
            raise KubernetesObjectConflictError()
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = f"{meta['generateName']}{next(self._suffixes):05d}"
            meta.update(resourceVersion=str(next(self._versions)), generation=1)
            meta.setdefault("uid", str(uuid.uuid4()))  # the API server names every object uniquely
            meta["creationTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        elif request.action == kmock.action.UPDATE and (obj := self._exact(request)) is not None:
            self._version(request, obj)
        try:
            return await super()._handle(request)
        except jsonpatch.JsonPatchTestFailed:
            raise PatchTestFailedError() from None
        finally:
            kept = self._exact(request) if self.forget else None
            if kept is not None and not kept.deleted and len(kept.history) > 1:
                kept.history = kept.history[-1:]


def _selected(obj: Any, params: Any) -> bool:
    """Whether an object matches the request's equality `labelSelector` (``a=b,c=d``), as the API server filters."""
    selector = params.get("labelSelector")
    if not selector:
        return True
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in (term.split("=", 1) for term in selector.split(",")))
