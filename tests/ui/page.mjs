// Opens a static HTML report (a bake-off page, a bench or sweep report) in a
// real headless chromium and reports, as one JSON line on stdout, what a
// person would see: script errors, the charts drawn, the headings, the text
// of the element given. Writes a full-page screenshot.
//
// usage: node page.mjs REPORT.html SCREENSHOT.png [SELECTOR]
import { chromium } from "playwright-core";
import { pathToFileURL } from "node:url";

const [file, screenshot, selector] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"],
});
const report = { errors: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1500, height: 1000 } });
  page.on("pageerror", (e) => report.errors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && report.errors.push(m.text()));
  await page.goto(pathToFileURL(file).href);
  report.title = await page.title();
  report.charts = await page.locator("svg").count();
  // A chart with nothing drawn in it is no chart: count the drawn marks.
  report.marks = await page.locator("svg polyline, svg rect, svg circle, svg path").count();
  report.headings = await page.locator("h1, h2").allTextContents();
  report.tables = await page.locator("table").count();
  if (selector) report.selected = (await page.locator(selector).first().textContent()) ?? "";
  await page.screenshot({ path: screenshot, fullPage: true });
} catch (e) {
  report.errors.push(String(e));
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
