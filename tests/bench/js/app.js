// Benchmark guest: answers every request with 200, text/plain, "hello from js\n".
// Built into a wasi:http/proxy component by tests/bench/js/build.sh
// (componentize-js attaches this fetch-event listener to the exported
// wasi:http/incoming-handler#handle).
addEventListener('fetch', (event) => {
  event.respondWith(
    new Response('hello from js\n', {
      status: 200,
      headers: { 'content-type': 'text/plain' },
    }),
  );
});
