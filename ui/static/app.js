// Talaria pages: forms and buttons send JSON to the API with the session's CSRF token.
"use strict";

const csrfToken = () => document.querySelector('meta[name="csrf-token"]').content;

async function send(method, url, body, isJson = true) {
  const headers = { "X-CSRF-Token": csrfToken() };
  if (isJson) headers["Content-Type"] = "application/json";
  const response = await fetch(url, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : (isJson ? JSON.stringify(body) : body),
  });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  if (!response.ok) {
    const detail = data && data.detail !== undefined ? data.detail : text;
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return data;
}

function parsePairs(text) {
  const tags = {};
  for (const line of text.split("\n")) {
    const at = line.indexOf("=");
    if (at > 0) tags[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return tags;
}

function valueOf(element) {
  const text = element.value;
  switch (element.dataset.kind) {
    case "bool": return element.checked;
    case "number": return text.trim() === "" ? null : Number(text);
    case "list": return text.split(",").map((s) => s.trim()).filter((s) => s);
    case "json":
      try { return JSON.parse(text || "null"); }
      catch (error) { throw new Error(`${element.name}: not valid JSON (${error.message})`); }
    case "pairs": return parsePairs(text);
    case "optional": return text.trim() === "" ? null : text;
    default: return text;
  }
}

function formBody(form) {
  const body = {};
  for (const element of form.querySelectorAll("[name][data-kind]")) body[element.name] = valueOf(element);
  return body;
}

function summary(data) {
  if (data && typeof data === "object" && "summary" in data) return data.summary;
  return "Done";
}

function show(form, error) {
  const box = form.querySelector(".form-error");
  if (box) { box.textContent = error ? error.message : ""; box.hidden = !error; }
}

async function submitApiForm(event) {
  event.preventDefault();
  const form = event.currentTarget;
  show(form, null);
  try {
    const data = await send(form.dataset.method || "POST", form.dataset.api, formBody(form));
    if (form.dataset.result) {
      const out = document.querySelector(form.dataset.result);
      out.textContent = summary(data);
      out.className = "result " + (data && (data.outcome === "error" || data.ok === false) ? "bad" : "ok");
    } else if (form.dataset.next) {
      window.location.assign(form.dataset.next);
    } else {
      window.location.reload();
    }
  } catch (error) { show(form, error); }
}

async function clickAction(event) {
  const button = event.currentTarget;
  if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
  const method = button.dataset.method || "POST";
  const body = button.dataset.body ? JSON.parse(button.dataset.body) : undefined;
  const out = document.querySelector("#action-result");
  try {
    const data = await send(method, button.dataset.action, body);
    if (data && typeof data === "object" && "summary" in data && out) {
      out.textContent = summary(data);
      out.className = "result " + (data.ok === false ? "bad" : "ok");
    } else if (method === "DELETE") {
      window.location.assign(window.location.pathname.split("/").slice(0, 2).join("/"));
    } else {
      window.location.reload();
    }
  } catch (error) {
    if (out) { out.textContent = error.message; out.className = "result bad"; } else window.alert(error.message);
  }
}

async function fillTags(event) {
  const input = event.currentTarget;
  const target = document.querySelector(input.dataset.tagsFrom);
  const form = input.closest("form");
  if (!input.files.length) return;
  const data = new FormData();
  data.append("file", input.files[0]);
  try {
    const found = await send("POST", "/api/rules-test/file-tags", data, false);
    target.value = Object.entries(found.tags).map(([k, v]) => `${k} = ${v}`).join("\n");
    show(form, null);
  } catch (error) { show(form, error); }
}

async function upload(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const out = document.querySelector(form.dataset.result);
  show(form, null);
  let stored = 0;
  try {
    for (const file of form.querySelector('input[type="file"]').files) {
      await send("POST", form.dataset.upload, file, false);
      stored += 1;
      out.textContent = `${stored} file(s) received`;
    }
    out.className = "result ok";
  } catch (error) { show(form, error); }
}

async function textInto(event) {
  const input = event.currentTarget;
  if (input.files.length) document.querySelector(input.dataset.textInto).value = await input.files[0].text();
}

document.addEventListener("DOMContentLoaded", () => {
  for (const form of document.querySelectorAll("form[data-api]")) form.addEventListener("submit", submitApiForm);
  for (const form of document.querySelectorAll("form[data-upload]")) form.addEventListener("submit", upload);
  for (const button of document.querySelectorAll("button[data-action]")) button.addEventListener("click", clickAction);
  for (const input of document.querySelectorAll("input[data-tags-from]")) input.addEventListener("change", fillTags);
  for (const input of document.querySelectorAll("input[data-text-into]")) input.addEventListener("change", textInto);
  for (const copy of document.querySelectorAll("[data-mirror]")) {
    const source = document.querySelector(copy.dataset.mirror);
    if (source) source.addEventListener("input", () => { copy.value = source.value; });
  }
  for (const form of document.querySelectorAll("form.readonly")) {
    for (const element of form.elements) element.disabled = true;
  }
});
