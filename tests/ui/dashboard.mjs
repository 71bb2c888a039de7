// Opens switchyard's /ui in a real headless chromium and reports, as one
// JSON line on stdout, what a person would see: tests/e2e/test_dashboard.py
// sends the traffic, runs this, and checks the report.
//
// usage: node dashboard.mjs BASE_URL API_KEY SCREENSHOT.png
import { chromium } from "playwright-core";

const [base, key, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"],
});
const report = { errors: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
  page.on("pageerror", (e) => report.errors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && !m.text().includes("401") && report.errors.push(m.text()));
  page.setDefaultTimeout(20_000);
  const text = (sel) => page.locator(sel).first().textContent();

  await page.goto(`${base}/ui`);
  // Keys exist: the page asks for one and shows nothing before.
  await page.locator("#login").waitFor({ state: "visible" });
  report.asked_for_key = await page.locator("#board").isHidden();
  await page.fill("#key", "sy-00000000_wrongwrongwrongwrong");
  await page.click("#login button");
  await page.waitForFunction(() => document.getElementById("login-error").textContent.length > 0);
  report.wrong_key_message = await text("#login-error");

  await page.fill("#key", key);
  await page.click("#login button");
  await page.locator("#board").waitFor({ state: "visible" });
  await page.waitForFunction(() => Number(document.getElementById("total-requests").textContent) > 0);
  report.requests_before = Number(await text("#total-requests"));

  // Live: one more request, and the page counts it without a reload.
  const asked = await fetch(`${base}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
    body: JSON.stringify({ model: "auto", max_tokens: 4, messages: [{ role: "user", content: "Say hi." }] }),
  });
  report.live_status = asked.status;
  await page.waitForFunction(
    (n) => Number(document.getElementById("total-requests").textContent) > n,
    report.requests_before,
  );
  report.requests_after = Number(await text("#total-requests"));
  for (const id of ["total-refused", "total-escalated", "total-cost", "total-cost-per-task", "total-rate"]) {
    report[id] = await text(`#${id}`);
  }
  report.routes = await page.$$eval("#routes tbody tr", (rows) =>
    rows.map((r) => [...r.cells].map((c) => c.textContent)),
  );
  report.handoffs = await page.$$eval("#handoffs tbody tr", (rows) => rows.length);
  report.lanes = await page.$$eval("#lanes tbody tr", (rows) => rows.map((r) => r.cells[0].textContent));
  report.chart_lines = await page.$$eval("#chart-latency polyline, #chart-rate polyline", (ls) => ls.length);
  report.recent = await page.$$eval("#recent tbody tr", (rows) => rows.length);

  await page.screenshot({ path: screenshot, fullPage: true });

  // Click through to a record.
  await page.locator("#recent tbody tr").first().click();
  await page.waitForFunction(() => document.getElementById("detail-body").textContent.includes("request_id"));
  report.detail = JSON.parse(await text("#detail-body"));
} catch (e) {
  report.failure = String(e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
