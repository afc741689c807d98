// A generic connect-node client driven by a JSON spec, used by tests/test_interop_node.py.
//
//   node client.mjs spec.json      (or the spec on stdin)
//
// spec = {
//   "descriptorSet": "/path/schema.binpb",     // FileDescriptorSet with imports
//   "service": "testsvc.v1.TestService",
//   "calls": [{
//     "id": "any label",
//     "protocol": "connect" | "grpc" | "grpcweb",
//     "baseUrl": "http://127.0.0.1:1234",       // https:// for TLS (CA via NODE_EXTRA_CA_CERTS)
//     "httpVersion": "1.1" | "2",                // gRPC is always HTTP/2
//     "binary": true,                            // false = JSON codec
//     "useGet": false,                           // Connect GET for NO_SIDE_EFFECTS methods
//     "gzip": false,                             // send gzip-compressed messages (any size)
//     "method": "Echo",                          // RPC name as in the .proto
//     "request": {...},                          // proto3 JSON of the request
//     "headers": {"name": "value" | ["v1", "v2"]},
//     "timeoutMs": 1000
//   }]
// }
//
// Prints one JSON line: {"results": [{"id", "ok", "responses": [proto3 JSON...],
// "headers": {name: [values]}, "trailers": {...}, "error": {"code", "codeName",
// "rawMessage", "details": [{"type", "value" (base64)}], "metadata": {...}}}]}.
// A failing RPC is a result, not a process failure; the exit code is 0 unless the
// spec itself is broken.

import { readFileSync } from "node:fs";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import {
  compressionGzip,
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import { createFileRegistry, fromBinary, fromJson, toJson } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";

const specText = process.argv[2] ? readFileSync(process.argv[2], "utf8") : readFileSync(0, "utf8");
const spec = JSON.parse(specText);
const registry = createFileRegistry(
  fromBinary(FileDescriptorSetSchema, readFileSync(spec.descriptorSet)),
);
const service = registry.getService(spec.service);
if (!service) throw new Error(`service ${spec.service} not in ${spec.descriptorSet}`);

function lowerFirst(s) {
  return s.charAt(0).toLowerCase() + s.slice(1);
}

function snake(name) {
  // Code[...] gives "InvalidArgument"; the wire name is "invalid_argument".
  return name.replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase();
}

function headersToObject(headers) {
  const out = {};
  if (!headers) return out;
  for (const [name, value] of headers.entries()) {
    (out[name] ??= []).push(value);
  }
  return out;
}

function requestHeaders(spec) {
  const headers = new Headers();
  for (const [name, value] of Object.entries(spec ?? {})) {
    for (const v of Array.isArray(value) ? value : [value]) headers.append(name, v);
  }
  return headers;
}

function transportFor(call) {
  const common = {
    baseUrl: call.baseUrl,
    useBinaryFormat: call.binary ?? true,
    sendCompression: call.gzip ? compressionGzip : null,
    compressMinBytes: call.gzip ? 0 : 1024,
    // Any fields (error details in requests) need the registry to go through JSON.
    jsonOptions: { registry },
  };
  switch (call.protocol) {
    case "connect":
      return createConnectTransport({
        ...common,
        httpVersion: call.httpVersion ?? "2",
        useHttpGet: call.useGet ?? false,
      });
    case "grpc":
      return createGrpcTransport(common);
    case "grpcweb":
      return createGrpcWebTransport({ ...common, httpVersion: call.httpVersion ?? "2" });
    default:
      throw new Error(`unknown protocol ${call.protocol}`);
  }
}

async function run(call) {
  const method = service.methods.find((m) => m.name === call.method);
  if (!method) throw new Error(`no method ${call.method}`);
  const client = createClient(service, transportFor(call));
  const result = { id: call.id, ok: false, responses: [], headers: {}, trailers: {} };
  const options = {
    headers: requestHeaders(call.headers),
    timeoutMs: call.timeoutMs,
    onHeader: (h) => {
      result.headers = headersToObject(h);
    },
    onTrailer: (t) => {
      result.trailers = headersToObject(t);
    },
  };
  const request = fromJson(method.input, call.request ?? {}, { registry });
  const fn = client[lowerFirst(method.name)];
  try {
    if (method.methodKind === "unary") {
      const response = await fn(request, options);
      result.responses.push(toJson(method.output, response, { registry }));
    } else if (method.methodKind === "server_streaming") {
      for await (const response of fn(request, options)) {
        result.responses.push(toJson(method.output, response, { registry }));
      }
    } else {
      throw new Error(`method kind ${method.methodKind} not supported by this script`);
    }
    result.ok = true;
  } catch (e) {
    const err = ConnectError.from(e);
    result.error = {
      code: err.code,
      codeName: snake(Code[err.code]),
      rawMessage: err.rawMessage,
      details: err.details.map((d) => ({
        type: d.desc ? d.desc.typeName : d.type,
        value: Buffer.from(d.value ?? new Uint8Array()).toString("base64"),
      })),
      metadata: headersToObject(err.metadata),
      cause: err.cause ? String(err.cause) : undefined,
    };
  }
  return result;
}

const results = [];
for (const call of spec.calls) {
  results.push(await run(call));
}
process.stdout.write(`${JSON.stringify({ results })}\n`);
