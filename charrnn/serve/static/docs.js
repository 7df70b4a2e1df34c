// The API reference, drawn from the server's own OpenAPI schema: no CDN, nothing to build.
"use strict";

const el = (tag, text, cls) => {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
};

function resolve(schema, spec) {
  // A "$ref" points into components/schemas; allOf/anyOf of one ref say the same thing.
  if (!schema) return {};
  if (schema.$ref) return resolve(spec.components.schemas[schema.$ref.split("/").pop()], spec);
  if (schema.allOf && schema.allOf.length === 1) return { ...resolve(schema.allOf[0], spec), ...schema };
  return schema;
}

function typeOf(schema, spec) {
  schema = resolve(schema, spec);
  if (schema.anyOf) return schema.anyOf.map((s) => typeOf(s, spec)).join(" | ");
  if (schema.type === "array") return typeOf(schema.items, spec) + "[]";
  return schema.type || schema.title || "any";
}

function limits(schema) {
  const parts = [];
  const all = [schema, ...(schema.anyOf || [])];
  for (const s of all) {
    if (s.minimum !== undefined) parts.push(">= " + s.minimum);
    if (s.exclusiveMinimum !== undefined) parts.push("> " + s.exclusiveMinimum);
    if (s.maximum !== undefined) parts.push("<= " + s.maximum);
    if (s.maxLength !== undefined) parts.push("at most " + s.maxLength + " characters");
  }
  return parts.join(", ");
}

function fieldsTable(schema, spec) {
  schema = resolve(schema, spec);
  const table = el("table");
  const head = table.insertRow();
  for (const name of ["field", "type", "default", "allowed", "meaning"]) head.appendChild(el("th", name));
  for (const [name, raw] of Object.entries(schema.properties || {})) {
    const field = resolve(raw, spec);
    const row = table.insertRow();
    row.appendChild(el("td", name, "mono"));
    row.appendChild(el("td", typeOf(raw, spec)));
    row.appendChild(el("td", field.default === undefined ? "" : JSON.stringify(field.default), "mono"));
    row.appendChild(el("td", limits(field)));
    row.appendChild(el("td", field.description || ""));
  }
  return table;
}

function operation(path, method, op, spec) {
  const section = el("section", undefined, "operation");
  const title = el("h2");
  title.appendChild(el("span", method.toUpperCase() + " ", "method"));
  title.appendChild(el("span", path, "mono"));
  section.appendChild(title);
  if (op.summary) section.appendChild(el("p", op.summary));
  if (op.description) section.appendChild(el("p", op.description, "dim"));
  const body = op.requestBody && op.requestBody.content && op.requestBody.content["application/json"];
  if (body) {
    section.appendChild(el("h3", "request body (JSON)"));
    section.appendChild(fieldsTable(body.schema, spec));
  }
  section.appendChild(el("h3", "answers"));
  const list = el("ul");
  for (const [status, answer] of Object.entries(op.responses || {})) {
    const item = el("li");
    item.appendChild(el("span", status + " ", "mono"));
    item.appendChild(document.createTextNode(answer.description || ""));
    const json = answer.content && answer.content["application/json"];
    if (json && json.schema) item.appendChild(el("span", " → " + typeOf(json.schema, spec), "dim"));
    list.appendChild(item);
  }
  section.appendChild(list);
  return section;
}

async function main() {
  const root = document.getElementById("api");
  try {
    const answer = await fetch("/openapi.json");
    if (!answer.ok) throw new Error("HTTP " + answer.status);
    // Integers past 2^53 (the seed's maximum) as written, not rounded to the nearest double,
    // where the browser gives a reviver the source text (JSON.parse with source access).
    const spec = JSON.parse(await answer.text(), (key, value, context) =>
      typeof value === "number" && !Number.isSafeInteger(value) && Number.isInteger(value) &&
      context && context.source ? context.source : value);
    document.getElementById("version").textContent = spec.info.title + " " + spec.info.version;
    root.textContent = "";
    if (spec.info.summary) root.appendChild(el("p", spec.info.summary));
    for (const [path, methods] of Object.entries(spec.paths)) {
      for (const [method, op] of Object.entries(methods)) root.appendChild(operation(path, method, op, spec));
    }
  } catch (error) {
    root.textContent = "Could not read /openapi.json: " + error.message;
  }
}

main();
