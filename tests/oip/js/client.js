// An Open Inference Protocol client in another language: grpc-js with the proto loaded at run time
// by proto-loader (no stubs of ours). Calls a live seqserve and prints what it received as JSON.
//   node tests/oip/js/client.js 127.0.0.1:50051
const path = require("path");
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const proto = path.join(__dirname, "..", "..", "..", "protos", "inference", "open_inference_grpc.proto");
const def = loader.loadSync(proto, { keepCase: true, longs: Number, defaults: true });
const inference = grpc.loadPackageDefinition(def).inference;
const client = new inference.GRPCInferenceService(process.argv[2], grpc.credentials.createInsecure());
const call = (method, request) =>
  new Promise((resolve) => client[method](request, (err, reply) => resolve(err ? { error: { code: err.code, details: err.details } } : reply)));

function framed(texts) {  // BYTES elements: 4-byte little-endian length, then the bytes
  return Buffer.concat(texts.map((t) => {
    const b = Buffer.from(t, "utf8");
    const n = Buffer.alloc(4);
    n.writeUInt32LE(b.length);
    return Buffer.concat([n, b]);
  }));
}

function unframe(buf) {
  const out = [];
  for (let pos = 0; pos < buf.length;) {
    const n = buf.readUInt32LE(pos);
    out.push(buf.subarray(pos + 4, pos + 4 + n).toString("utf8"));
    pos += 4 + n;
  }
  return out;
}

(async () => {
  const out = {};
  out.ready = (await call("ServerReady", {})).ready;
  const meta = await call("ModelMetadata", { name: "forecast-etth1" });
  out.forecast_inputs = meta.inputs.map((t) => [t.name, t.datatype, t.shape]);
  const texts = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee."];
  // typed contents
  const typed = await call("ModelInfer", {
    model_name: "translate-de-en",
    inputs: [{ name: "text", datatype: "BYTES", shape: [2], contents: { bytes_contents: texts.map((t) => Buffer.from(t)) } }],
    parameters: { beam_size: { int64_param: 4 } },
  });
  out.typed = unframe(typed.raw_output_contents[0]);
  // raw contents
  const raw = await call("ModelInfer", {
    model_name: "translate-de-en",
    inputs: [{ name: "text", datatype: "BYTES", shape: [2] }],
    raw_input_contents: [framed(texts)],
    parameters: { beam_size: { uint64_param: 4 } },
  });
  out.raw = unframe(raw.raw_output_contents[0]);
  const history = Buffer.alloc(400 * 4);
  for (let i = 0; i < 400; i++) history.writeFloatLE(Math.sin((i / 24) * 2 * Math.PI), i * 4);
  const fc = await call("ModelInfer", {
    model_name: "forecast-etth1",
    inputs: [{ name: "history", datatype: "FP32", shape: [1, 400] }],
    raw_input_contents: [history],
    parameters: { horizon: { int64_param: 6 } },
  });
  const f = fc.raw_output_contents[0];
  out.forecast = Array.from({ length: f.length / 4 }, (_, i) => f.readFloatLE(i * 4));
  out.forecast_shape = fc.outputs[0].shape;
  out.error = (await call("ModelInfer", { model_name: "nope", inputs: [] })).error;
  console.log(JSON.stringify(out));
  client.close();
})();
