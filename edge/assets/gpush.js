/*
 * gpush.js: the browser client of gpush, served by every edge at /gpush.js.
 * Plain JavaScript (ES2017), no dependencies, no build step.
 *
 *   const c = new GPush({url: "ws://localhost:9992/ws"});   // or {discover: "http://ingress:10068"}
 *   c.on("state", (state) => console.log(state));
 *   c.subscribe("news", (data, push) => console.log(data));
 *   c.login(token).then(() => c.subscribePrivate("orders", (data) => console.log(data)));
 *
 * The client keeps the subscriptions and the login it was asked for, and
 * gives them back to every new connection: after a reconnect it logs in
 * again, then subscribes again (public topics at once, private ones after
 * the login succeeded). Reconnects wait with jittered exponential backoff;
 * a close with 1001 (the edge is draining) reconnects at once, through
 * discovery when configured, so another edge is chosen. A text "ping" every
 * `pingInterval` must be answered within `pongTimeout` or the connection is
 * replaced. A close with 4003 (the server API disconnected the user) is
 * the end: see The server below.
 *
 * Requests return promises that resolve with the edge's reply, reject with
 * an Error carrying `.reply` when the edge refuses (30001-30007), and reject
 * when the client is closed. Requests made while disconnected are sent once
 * connected. When a connection is lost before a reply came, the request is
 * given again to the next connection (subscriptions, login) or settled
 * with `null` (unsubscribe, logout: the new connection does not have what
 * was dropped).
 *
 * Push handlers get `(data, push)`: `data` is the payload (the JSON value,
 * a string, or a Uint8Array when the edge sent it as base64) and `push` the
 * whole frame ({code, topic?, data, encoding?, offset?}). `push.offset` is
 * the push's position in its stream where the edge keeps history: a public
 * topic is a stream; a user's private topics and user-wide pushes share
 * one stream (one offset sequence) per user; pushes to everyone have none.
 *
 * Recovery. The client remembers, per public topic, per private topic and
 * for the user-wide pushes, the last offset and the epoch it saw (from the
 * subscribe and login replies and from pushes). After every reconnect it
 * logs in and resubscribes with `since` (a first subscribe or login sends
 * none); the edge then sends the missed pushes, in order, before any live
 * one, and the handlers get them as usual. Per topic, one event says how
 * that went, right when the edge's reply arrives:
 *
 *   c.on("recovered", (topic, info) => ...)  // the missed pushes follow
 *   c.on("gap", (topic, info) => ...)        // pushes were lost: reload
 *
 * `topic` is the topic, or null for the user-wide pushes (the login's);
 * `info` is {private, since: {offset, epoch}, offset, epoch}: `private`
 * true for private topics and user-wide pushes, `since` what was asked
 * for, `offset` and `epoch` the stream's position now (null when the
 * topic no longer keeps history). "gap" fires when the edge answers
 * `recovered: false` (the history was lost, a new epoch, too much missed)
 * or does not say it recovered: the application reloads that topic's
 * state from its backend then, and only then. "gap" also fires (with
 * `since` null) when the edge tells the connection it lost pushes of a
 * stream it follows (push 10007: `offset` is the last one delivered). A
 * push whose offset is not greater than the last one seen for its topic
 * (or for the user-wide
 * pushes) is dropped: no handler gets a push twice. The positions of a
 * user's private topics and user-wide pushes move together: the edge sends
 * a stream's pushes in order, so any push (or reply offset) of the user's
 * stream shows that every part of it joined on this connection is
 * complete up to there. Where the edge keeps no history (no offsets in
 * replies), nothing of this happens: no since, no event, nothing dropped.
 *
 * Logins expire with their token: the login reply says when (`expires`,
 * unix seconds) and the edge ends the login then (push 10004, event
 * "expired"). Give `getToken` (a function returning a Promise of a fresh
 * token) and the client refreshes the login by itself before it expires
 * (subscriptions kept), asks it for the token of every login after a
 * reconnect, and logs in again after a 10004. `login()` with no argument
 * takes its token from `getToken`.
 *
 * The server. A backend steers its clients through the server API; the
 * client follows and says so:
 *
 *   c.on("disconnected", ({code, reason}) => ...)        // close 4003
 *   c.on("loggedout", ({uid, reason}) => ...)            // 10004 "logout"
 *   c.on("subscribed", ({topic, private, keep}) => ...)  // 10008
 *   c.on("unsubscribed", ({topic, private}) => ...)      // 10009
 *
 * After a 4003 (`reason` is the close frame's) the client is closed as
 * by close(): it does not reconnect by itself, and waiting requests are
 * rejected; the application decides (connect() starts again with what
 * the client kept, a new GPush starts afresh). After a server logout
 * (10004 with reason "logout"; "expired" stays for expiries) the login is
 * over as after logout(): private subscriptions dropped, and no new login
 * even with `getToken`, until the application calls login(). A topic the
 * server subscribed the connection to (10008) is recorded like a
 * subscribe reply (its position: recovery works for it), and its pushes
 * go to the "push" event (and to a handler, where the application
 * subscribed to it too). With `keep` it is kept exactly like one of the
 * application's: sent again after every reconnect (a private one after the
 * login), listed by topics() or privateTopics(); without, it lasts as long
 * as the connection: the server decides again on the next one. An
 * unsubscribe by the server (10009) ends it, kept or not, and ends one the
 * application made too (its waiting promise is rejected).
 *
 * Presence, for topics where the edge's `[presence]` rule enables it:
 *
 *   c.on("join", ({topic, uid}) => ...)    // 10005: uid's first connection subscribed
 *   c.on("leave", ({topic, uid}) => ...)   // 10006: uid's last one left
 *   c.on("presence", ({topic}) => ...)     // 10010: too many changes: ask
 *   c.presence("room").then(({users, anonymous}) => ...)  // request 7
 *
 * `users` maps every uid subscribed to the topic (cluster-wide) to its
 * number of connections, `anonymous` counts the connections without a
 * login. presence() is refused (30007 "not allowed") unless the rule
 * allows the query and this connection is subscribed to the topic; asked
 * while disconnected, it is sent once connected (after the subscriptions).
 *
 * Private and user-wide pushes (10002) are never handed over between
 * users: from a login() or logout() call until the edge's login reply, the
 * client drops them (they belong to the previous login).
 */
(function (root) {
  "use strict";

  /** Request, push and reply codes of the client protocol (README). */
  const CODE = Object.freeze({
    SUBSCRIBE: 1,
    UNSUBSCRIBE: 2,
    LOGIN: 3,
    LOGOUT: 4,
    SUBSCRIBE_PRIVATE: 5,
    UNSUBSCRIBE_PRIVATE: 6,
    PRESENCE: 7,
    PUSH_PUBLIC: 10001,
    PUSH_PRIVATE: 10002,
    PUSH_EVERYONE: 10003,
    LOGIN_ENDED: 10004,
    JOINED: 10005,
    LEFT: 10006,
    GAP: 10007,
    SERVER_SUBSCRIBED: 10008,
    SERVER_UNSUBSCRIBED: 10009,
    PRESENCE_CHANGED: 10010,
    CONNECTED: 20000,
    SUBSCRIBED: 20001,
    UNSUBSCRIBED: 20002,
    LOGGED_IN: 20003,
    LOGGED_OUT: 20004,
    PRESENCE_ANSWER: 20005,
    BAD_REQUEST: 30001,
    NOT_LOGGED_IN: 30002,
    AUTH_FAILED: 30003,
    INVALID_TOPIC: 30004,
    LIMIT_REACHED: 30005,
    RATE_LIMITED: 30006,
    NOT_ALLOWED: 30007,
  });

  /** Close code of an edge that shuts down: go to another edge. */
  const GOING_AWAY = 1001;
  /** Close code this client uses when it gives up on a silent connection. */
  const KEEPALIVE_CLOSE = 4000;
  /** Close code of the server API's disconnect: do not reconnect by itself. */
  const SERVER_DISCONNECT = 4003;
  /** The reason of a 10004 that the server API sent (not an expiry). */
  const LOGOUT_REASON = "logout";
  /** The longest setTimeout delay browsers honour, in ms. */
  const MAX_TIMER = 2147483647;

  const DEFAULTS = Object.freeze({
    url: null, // ws:// or wss:// URL of an edge
    discover: null, // http(s) base URL of ingress: GET /v1/connect picks the edge
    reconnectInitial: 500, // ms, first backoff step
    reconnectMax: 10000, // ms, backoff cap
    drainJitter: 500, // ms, most a 1001 reconnect waits
    connectTimeout: 10000, // ms for discovery plus the WebSocket handshake
    pingInterval: 20000, // ms between text pings
    pongTimeout: 10000, // ms to hear anything back after a ping
    autoConnect: true,
    WebSocket: null, // WebSocket implementation (default: the browser's)
    fetch: null, // fetch implementation (default: the browser's)
    getToken: null, // () => Promise of a fresh login token; enables refresh
    refreshBefore: 30000, // ms before `expires` to refresh (at most half the time left)
  });

  function refusal(reply, request) {
    const text = reply.detail ? reply.message + ": " + reply.detail : reply.message;
    const error = new Error("gpush: " + reply.code + " " + text);
    error.reply = reply;
    error.request = request;
    return error;
  }

  function base64Bytes(text) {
    const binary = root.atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }

  function pushData(push) {
    if (push.encoding === "base64" && typeof push.data === "string") {
      try {
        return base64Bytes(push.data);
      } catch (e) {
        return push.data;
      }
    }
    return push.data;
  }

  /**
   * The recovery key of a subscription, login or push: "t:<topic>" for a
   * public topic, "p:<topic>" for a private one, "u" for the user-wide
   * pushes (the login's); null for what has no position.
   */
  function streamKey(code, topic) {
    if (code === CODE.SUBSCRIBE || code === CODE.PUSH_PUBLIC) return "t:" + topic;
    if (code === CODE.SUBSCRIBE_PRIVATE) return "p:" + topic;
    if (code === CODE.PUSH_PRIVATE) return typeof topic === "string" ? "p:" + topic : "u";
    if (code === CODE.LOGIN) return "u";
    return null;
  }

  /** Whether `key` is a position of the logged-in user's stream. */
  function userKey(key) {
    return key === "u" || key.startsWith("p:");
  }

  /** A desired subscription or login: what to restore and who waits for it. */
  function item(handler) {
    return {handler: handler, waiters: []};
  }

  class GPush {
    /**
     * @param {object} options `url` (edge WebSocket URL) and/or `discover`
     *   (ingress base URL); see DEFAULTS for the timing options.
     */
    constructor(options) {
      const opts = Object.assign({}, DEFAULTS, options || {});
      if (!opts.url && !opts.discover) {
        throw new Error("gpush: give `url` (an edge's ws:// URL) or `discover` (ingress's http:// URL)");
      }
      this.options = opts;
      this._WebSocket = opts.WebSocket || root.WebSocket;
      this._fetch = opts.fetch || (root.fetch ? root.fetch.bind(root) : null);
      /** "idle", "connecting", "open", "waiting" (backoff), "closed". */
      this.state = "idle";
      /** URL of the current (or last) edge. */
      this.url = null;
      /** Node id of the current edge, when it came from discovery. */
      this.nodeId = null;
      /** The logged-in uid, or null. */
      this.uid = null;
      /** Number of connections opened so far. */
      this.connects = 0;

      this._listeners = new Map();
      this._public = new Map(); // topic -> item
      this._private = new Map(); // topic -> item
      this._user = new Set(); // handlers of user-wide pushes
      this._everyone = new Set(); // handlers of everyone pushes
      this._token = null; // login to restore, or null
      this._login = null; // its item
      this._loggedIn = false;
      this._expires = null; // unix seconds the login expires at, or null
      this._pending = new Map(); // request id -> {code, topic, item, waiters, key, since, query}
      this._queries = []; // queries (presence) waiting for a connection
      // Server subscriptions (10008) without `keep`: stream key ->
      // {topic, private}; they last as long as the connection.
      this._server = new Map();
      // Recovery: stream key (see streamKey) -> {offset, epoch}, the last
      // position seen; the uid the private and user-wide ones belong to;
      // the keys joined on the current connection (no since for those).
      this._pos = new Map();
      this._posUid = null;
      this._joined = new Set();
      this._nextId = 0;
      this._ws = null;
      this._gen = 0; // bumps on every connect attempt, so stale callbacks do nothing
      this._attempt = 0;
      this._avoid = null; // URL of an edge that told us to go away
      this._timers = {retry: null, connect: null, ping: null, pong: null, refresh: null};
      this._lastHeard = 0;
      this._closed = false;
      if (opts.autoConnect) this.connect();
    }

    // ---- events ---------------------------------------------------------

    /**
     * Listens to "state" (state, info), "open" ({url, nodeId}), "close"
     * ({code, reason}), "push" (push, data), "reply" (reply), "expired"
     * ({uid, reason}: push 10004, the login expired), "recovered" (topic,
     * info) and "gap" (topic, info) (see Recovery above), "disconnected"
     * ({code, reason}), "loggedout" ({uid, reason}), "subscribed" ({topic,
     * private, keep}) and "unsubscribed" ({topic, private}) (see The
     * server above), "join" and "leave" ({topic, uid}) and "presence"
     * ({topic}) (see Presence above), or "error" (Error). Returns a
     * function that removes the listener.
     */
    on(event, fn) {
      if (!this._listeners.has(event)) this._listeners.set(event, new Set());
      this._listeners.get(event).add(fn);
      return () => this.off(event, fn);
    }

    /** Removes a listener added with on(). */
    off(event, fn) {
      const set = this._listeners.get(event);
      if (set) set.delete(fn);
    }

    _emit(event, ...args) {
      const set = this._listeners.get(event);
      if (!set) return;
      for (const fn of Array.from(set)) {
        try {
          fn(...args);
        } catch (e) {
          if (event !== "error") this._emit("error", e);
        }
      }
    }

    _setState(state, info) {
      this.state = state;
      this._emit("state", state, info || {});
    }

    // ---- public API -----------------------------------------------------

    /** Subscribes to public `topic`; `handler(data, push)` gets its pushes. */
    subscribe(topic, handler) {
      return this._want(this._public, topic, handler, CODE.SUBSCRIBE, true);
    }

    /** Unsubscribes from public `topic`. */
    unsubscribe(topic) {
      this._forget(streamKey(CODE.SUBSCRIBE, topic));
      this._server.delete(streamKey(CODE.SUBSCRIBE, topic));
      return this._drop(this._public, topic, CODE.UNSUBSCRIBE);
    }

    /**
     * Logs in with `token` (kept, and sent again after every reconnect; with
     * `getToken`, a fresh one is asked for instead, and `token` may be left
     * out). On success every private subscription is (re)sent; a refused
     * token is forgotten, and the client is then logged out.
     */
    login(token) {
      if (token === undefined) {
        if (!this.options.getToken) return Promise.reject(new Error("gpush: login() needs a token or getToken"));
        token = null;
      }
      this._token = token;
      const next = item(null);
      if (this._login) next.waiters = this._login.waiters.splice(0);
      this._login = next;
      this._setLoggedIn(false);
      return this._ask(next, () => this._sendLogin());
    }

    /** Logs out and drops every private subscription. */
    logout() {
      this._token = null;
      this._setLoggedIn(false);
      this.uid = null;
      this._forgetUser();
      this._rejectItem(this._login, "logged out");
      this._login = null;
      for (const it of this._private.values()) this._rejectItem(it, "logged out");
      this._private.clear();
      return this._fire(CODE.LOGOUT);
    }

    /**
     * Subscribes to the logged-in user's private `topic`. Needs login()
     * first; kept across reconnects and sent again after every login.
     */
    subscribePrivate(topic, handler) {
      if (this._login === null) {
        return Promise.reject(new Error("gpush: subscribePrivate needs login() first"));
      }
      return this._want(this._private, topic, handler, CODE.SUBSCRIBE_PRIVATE, this._loggedIn);
    }

    /** Unsubscribes from private `topic`. */
    unsubscribePrivate(topic) {
      this._forget(streamKey(CODE.SUBSCRIBE_PRIVATE, topic));
      this._server.delete(streamKey(CODE.SUBSCRIBE_PRIVATE, topic));
      return this._drop(this._private, topic, CODE.UNSUBSCRIBE_PRIVATE);
    }

    /** The public topics the client keeps subscribed. */
    topics() {
      return Array.from(this._public.keys());
    }

    /** The private topics the client keeps subscribed (while logged in). */
    privateTopics() {
      return Array.from(this._private.keys());
    }

    /** `handler(data, push)` gets pushes to every connection of the user. */
    onUser(handler) {
      this._user.add(handler);
      return () => this._user.delete(handler);
    }

    /** `handler(data, push)` gets pushes to everyone. */
    onEveryone(handler) {
      this._everyone.add(handler);
      return () => this._everyone.delete(handler);
    }

    /**
     * Asks who is subscribed to public `topic` (request 7, see Presence
     * above): resolves with {users: {uid: connections}, anonymous}.
     */
    presence(topic) {
      if (typeof topic !== "string" || topic === "") {
        return Promise.reject(new Error("gpush: topic must be a non-empty string"));
      }
      const answer = (reply) => ({
        users: reply.users && typeof reply.users === "object" ? reply.users : {},
        anonymous: typeof reply.anonymous === "number" ? reply.anonymous : 0,
      });
      return this._query(CODE.PRESENCE, topic, answer);
    }

    /** Connects (again) now; done by the constructor unless autoConnect is false. */
    connect() {
      this._closed = false;
      this._clearTimer("retry");
      if (this._ws || this.state === "connecting") return;
      this._open();
    }

    /** Closes for good: no reconnect; waiting requests are rejected. */
    close() {
      this._stop("client closed", {});
    }

    /**
     * Ends the client for good (close(), or a 4003 from the server): no
     * reconnect until connect(); waiting requests are rejected with `why`.
     */
    _stop(why, info) {
      this._closed = true;
      this._gen++;
      for (const name of Object.keys(this._timers)) this._clearTimer(name);
      const ws = this._ws;
      this._ws = null;
      if (ws) {
        this._detach(ws);
        try {
          ws.close(1000, "client closed");
        } catch (e) {
          // Already closing.
        }
      }
      const queries = Array.from(this._pending.values()).concat(this._queries.splice(0));
      for (const entry of queries) {
        for (const w of entry.waiters) w.reject(new Error("gpush: " + why));
      }
      this._pending.clear();
      const items = [this._login].concat(Array.from(this._public.values()), Array.from(this._private.values()));
      for (const it of items) this._rejectItem(it, why);
      this._setLoggedIn(false);
      this.uid = null;
      this._dropServer(() => true);
      this._setState("closed", info);
    }

    // ---- requests -------------------------------------------------------

    _isOpen() {
      return !!this._ws && this._ws.readyState === 1 && this.state === "open";
    }

    /** Records `topic` in `map` and sends `code` now if `ready`. */
    _want(map, topic, handler, code, ready) {
      if (typeof topic !== "string" || topic === "") {
        return Promise.reject(new Error("gpush: topic must be a non-empty string"));
      }
      const previous = map.get(topic);
      const next = item(handler);
      if (previous) next.waiters = previous.waiters.splice(0);
      map.set(topic, next);
      // Wanted now by the application: kept, even if the server made it.
      this._server.delete(streamKey(code, topic));
      return this._ask(next, () => {
        if (ready) this._flush(next, code, topic);
      });
    }

    _drop(map, topic, code) {
      const it = map.get(topic);
      map.delete(topic);
      this._rejectItem(it, "unsubscribed");
      return this._fire(code, topic);
    }

    /** A promise settled by the next reply to `it`'s request; `send` may send it now. */
    _ask(it, send) {
      return new Promise((resolve, reject) => {
        it.waiters.push({resolve: resolve, reject: reject});
        if (this._isOpen()) send();
      });
    }

    /**
     * A query (presence): sent now or once connected, again on the next
     * connection when this one is lost before the reply; resolves with
     * `answer(reply)`.
     */
    _query(code, topic, answer) {
      return new Promise((resolve, reject) => {
        const query = {code: code, topic: topic, answer: answer, waiters: [{resolve: resolve, reject: reject}]};
        if (this._isOpen()) this._sendQuery(query);
        else this._queries.push(query);
      });
    }

    _sendQuery(query) {
      this._send(query.code, query.topic, undefined, null, query.waiters).query = query;
    }

    /** A request with no state to restore (unsubscribe, logout). */
    _fire(code, topic) {
      if (!this._isOpen()) return Promise.resolve(null);
      return new Promise((resolve, reject) => {
        this._send(code, topic, undefined, null, [{resolve: resolve, reject: reject}]);
      });
    }

    /** Sends `it`'s request, handing its waiters to that request. */
    _flush(it, code, topic, data) {
      this._send(code, topic, data, it, it.waiters.splice(0));
    }

    /**
     * Sends the login: with `getToken`, once it gave a fresh token (the
     * last one when it fails or gives none), as long as the same login is
     * still wanted on the same connection.
     */
    _sendLogin() {
      const it = this._login;
      if (!it) return;
      const getToken = this.options.getToken;
      if (!getToken) {
        this._flush(it, CODE.LOGIN, undefined, this._token);
        return;
      }
      const ws = this._ws;
      this._freshToken().then((token) => {
        if (it !== this._login || ws !== this._ws || !this._isOpen()) return;
        if (token !== null) this._token = token;
        if (this._token === null) {
          this._rejectItem(it, "getToken gave no token");
          return;
        }
        this._flush(it, CODE.LOGIN, undefined, this._token);
      });
    }

    /** getToken's token, or null (its error goes to "error"). */
    _freshToken() {
      return Promise.resolve()
        .then(() => this.options.getToken())
        .then(
          (token) => (token === undefined || token === null ? null : token),
          (e) => {
            this._emit("error", e instanceof Error ? e : new Error("gpush: getToken failed: " + e));
            return null;
          }
        );
    }

    /**
     * Whether the client takes 10002 pushes as its own: only between a
     * login reply and the next login(), logout() or connection.
     */
    _setLoggedIn(loggedIn) {
      this._loggedIn = loggedIn;
      if (!loggedIn) {
        this._expires = null;
        this._clearTimer("refresh");
      }
    }

    /** With getToken: refreshes the login before `expires` (unix seconds). */
    _scheduleRefresh(expires) {
      this._clearTimer("refresh");
      this._expires = typeof expires === "number" ? expires : null;
      if (this._expires === null || !this.options.getToken) return;
      const left = this._expires * 1000 - Date.now();
      const delay = Math.max(0, Math.max(left - this.options.refreshBefore, left / 2));
      const it = this._login;
      const ws = this._ws;
      this._timers.refresh = setTimeout(() => {
        this._timers.refresh = null;
        if (it !== this._login || ws !== this._ws || !this._loggedIn) return;
        // Timers wait at most 2^31 - 1 ms (24.8 days): wait again.
        if (delay > MAX_TIMER) return this._scheduleRefresh(this._expires);
        this._freshToken().then((token) => {
          if (token === null || it !== this._login || ws !== this._ws || !this._loggedIn) return;
          this._token = token;
          // A login for the same uid: the edge keeps the subscriptions.
          this._send(CODE.LOGIN, undefined, token, it, [], true);
        });
      }, Math.min(delay, MAX_TIMER));
    }

    /**
     * Push 10004: the edge ended the login. Its token expired: event
     * "expired", and with `getToken` the client logs in again. Or the
     * server API logged the user out (reason "logout"): event
     * "loggedout", and the login is over as after logout(), whatever
     * `getToken` could give.
     */
    _onLoginEnded(msg) {
      if (!this._loggedIn || msg.uid !== this.uid) return;
      const logout = msg.reason === LOGOUT_REASON;
      this._setLoggedIn(false);
      this.uid = null;
      const end = {uid: msg.uid, reason: msg.reason};
      // The edge dropped the login and the private subscriptions: the next
      // login and private subscribes recover what comes meanwhile; the
      // server's connection-long ones are gone for good.
      for (const key of Array.from(this._joined)) if (userKey(key)) this._joined.delete(key);
      this._dropServer(userKey);
      if (!logout && this.options.getToken && this._login) {
        this._emit("expired", end);
        // Log in again with a fresh token; private subscriptions follow.
        this._token = null;
        this._sendLogin();
        return;
      }
      // A login the edge takes after the logout (a refresh on its way)
      // would undo it: its reply is answered with a logout.
      if (logout) this._revoke(CODE.LOGIN, undefined, "logged out by the server");
      // The edge dropped the private subscriptions: so does the client.
      const why = logout ? "logged out by the server" : "login expired";
      this._token = null;
      this._rejectItem(this._login, why);
      this._login = null;
      this._forgetUser();
      for (const it of this._private.values()) this._rejectItem(it, why);
      this._private.clear();
      this._emit(logout ? "loggedout" : "expired", end);
    }

    // ---- the server's subscriptions and presence ------------------------

    /** Whether a `code` request for `topic` awaits the edge's reply. */
    _inFlight(code, topic) {
      for (const entry of this._pending.values()) {
        if (entry.code === code && entry.topic === topic) return true;
      }
      return false;
    }

    /**
     * The `code` requests for `topic` on their way are undone by what the
     * server did meanwhile: the edge carries them out after it, so their
     * success is undone in turn (see _onReply), and their waiters are
     * rejected with `why`.
     */
    _revoke(code, topic, why) {
      for (const entry of this._pending.values()) {
        if (entry.code === code && entry.topic === topic) entry.revoked = why;
      }
    }

    /** Forgets the server's connection-long subscriptions whose key passes `which`. */
    _dropServer(which) {
      for (const key of Array.from(this._server.keys())) {
        if (!which(key)) continue;
        this._server.delete(key);
        this._forget(key);
      }
    }

    /**
     * Push 10008: the server subscribed this connection to `msg.topic`
     * (see The server above). Where it crosses an unsubscribe of the
     * application's (on its way: the edge carries it out after this), the
     * unsubscribe wins and the topic is not recorded.
     */
    _onServerSubscribed(msg) {
      if (typeof msg.topic !== "string") return;
      const priv = msg.private === true;
      // Sent to the previous login, before the edge answered this one.
      if (priv && !this._loggedIn) return;
      const topic = msg.topic;
      const keep = msg.keep === true;
      const code = priv ? CODE.SUBSCRIBE_PRIVATE : CODE.SUBSCRIBE;
      const map = priv ? this._private : this._public;
      const key = streamKey(code, topic);
      const dropping = this._inFlight(priv ? CODE.UNSUBSCRIBE_PRIVATE : CODE.UNSUBSCRIBE, topic);
      if (!dropping) {
        if (map.has(topic)) {
          // The application's own: it stays as it is.
        } else if (keep) {
          map.set(topic, item(null));
          this._server.delete(key);
        } else {
          this._server.set(key, {topic: topic, private: priv});
        }
        this._joinedStream({code: code, topic: topic, key: key, since: null}, msg);
      }
      this._emit("subscribed", {topic: topic, private: priv, keep: keep});
    }

    /**
     * Push 10009: the server unsubscribed this connection from
     * `msg.topic`: forgotten, whoever made it. Where it crosses a
     * subscribe of the application's (on its way: the edge carries it out
     * after this), the unsubscribe wins: that subscribe is rejected and
     * undone once the edge accepted it.
     */
    _onServerUnsubscribed(msg) {
      if (typeof msg.topic !== "string") return;
      const priv = msg.private === true;
      if (priv && !this._loggedIn) return;
      const topic = msg.topic;
      const code = priv ? CODE.SUBSCRIBE_PRIVATE : CODE.SUBSCRIBE;
      const map = priv ? this._private : this._public;
      const key = streamKey(code, topic);
      const why = "unsubscribed by the server";
      this._server.delete(key);
      this._forget(key);
      const it = map.get(topic);
      map.delete(topic);
      this._rejectItem(it, why);
      this._revoke(code, topic, why);
      this._emit("unsubscribed", {topic: topic, private: priv});
    }

    /** Pushes 10005, 10006 and 10010: events "join", "leave", "presence". */
    _onPresence(msg) {
      if (typeof msg.topic !== "string") return;
      if (msg.code === CODE.PRESENCE_CHANGED) {
        this._emit("presence", {topic: msg.topic});
      } else if (typeof msg.uid === "string") {
        this._emit(msg.code === CODE.JOINED ? "join" : "leave", {topic: msg.topic, uid: msg.uid});
      }
    }

    _send(code, topic, data, it, waiters, refresh) {
      const id = ++this._nextId;
      const request = {code: code, id: id};
      if (topic !== undefined) request.topic = topic;
      if (data !== undefined) request.data = data;
      // A stream this connection has not joined yet, seen before: ask for
      // what was missed since (a refresh stays on the same connection).
      const key = refresh ? null : streamKey(code, topic);
      const pos = key === null || this._joined.has(key) ? undefined : this._pos.get(key);
      const since = pos ? {offset: pos.offset, epoch: pos.epoch} : null;
      if (since) request.since = since;
      const entry = {
        code: code,
        topic: topic,
        item: it,
        waiters: waiters,
        request: request,
        refresh: !!refresh,
        key: key,
        since: since,
        query: null,
        revoked: null, // why the server undid it (see _revoke)
      };
      this._pending.set(id, entry);
      try {
        this._ws.send(JSON.stringify(request));
      } catch (e) {
        // The socket is going; onclose hands the request to the next one.
      }
      return entry;
    }

    _rejectItem(it, why) {
      if (!it) return;
      for (const w of it.waiters.splice(0)) w.reject(new Error("gpush: " + why));
    }

    /** Whether `it` is still what the client wants (not replaced or dropped). */
    _current(entry) {
      const it = entry.item;
      if (!it) return false;
      if (entry.code === CODE.LOGIN) return it === this._login;
      if (entry.code === CODE.SUBSCRIBE) return this._public.get(entry.topic) === it;
      return this._private.get(entry.topic) === it;
    }

    // ---- recovery -------------------------------------------------------

    /** Forgets the position of `key`: its next subscribe is a first one. */
    _forget(key) {
      this._pos.delete(key);
      this._joined.delete(key);
    }

    /**
     * Forgets the positions of the user's stream (logout, another user),
     * and the server's connection-long subscriptions to its private topics.
     */
    _forgetUser() {
      for (const key of Array.from(this._pos.keys())) if (userKey(key)) this._pos.delete(key);
      for (const key of Array.from(this._joined)) if (userKey(key)) this._joined.delete(key);
      for (const key of Array.from(this._server.keys())) if (userKey(key)) this._server.delete(key);
      this._posUid = null;
    }

    /**
     * The user's stream is at `offset` (`epoch`) on this connection: its
     * pushes come in order, so every part of it joined here (user-wide
     * pushes, private topics) has had all of its pushes up to there, and
     * a later `since` need not reach back further (a quiet private topic
     * next to a busy one would otherwise ask for more than history keeps).
     */
    _userAt(offset, epoch) {
      for (const key of this._joined) {
        const pos = userKey(key) ? this._pos.get(key) : undefined;
        if (pos && pos.epoch === epoch && pos.offset < offset) pos.offset = offset;
      }
    }

    /**
     * A subscribe or login `entry` was accepted with `reply`: records the
     * stream's position, and after a `since` tells the application whether
     * the missed pushes follow ("recovered") or were lost ("gap").
     */
    _joinedStream(entry, reply) {
      const key = entry.key;
      let since = entry.since;
      if (entry.code === CODE.LOGIN) {
        const uid = reply.uid === undefined ? null : reply.uid;
        if (this._posUid !== uid) {
          // Positions of another user's stream mean nothing for this one.
          if (this._posUid !== null) since = null;
          this._forgetUser();
          this._posUid = uid;
        }
      }
      const has = typeof reply.offset === "number" && typeof reply.epoch === "string";
      // The rest of the user's stream joined here is complete up to the reply.
      if (has && userKey(key)) this._userAt(reply.offset, reply.epoch);
      this._joined.add(key);
      if (since && reply.recovered === true) {
        // The missed pushes follow the reply: they move the position.
        this._pos.set(key, {offset: since.offset, epoch: has ? reply.epoch : since.epoch});
      } else if (has) {
        this._pos.set(key, {offset: reply.offset, epoch: reply.epoch});
      } else {
        this._pos.delete(key); // no history: no offsets, no since
      }
      if (!since) return;
      const topic = entry.code === CODE.LOGIN ? null : entry.topic;
      const info = {
        private: entry.code !== CODE.SUBSCRIBE,
        since: since,
        offset: has ? reply.offset : null,
        epoch: has ? reply.epoch : null,
      };
      this._emit(reply.recovered === true ? "recovered" : "gap", topic, info);
    }

    /**
     * Push 10007: the edge lost pushes of a stream this connection follows
     * (after `offset`, the last one it delivered). A "gap" event for the
     * topic, or for the user-wide pushes and every private topic joined
     * here when `topic` is absent (the user's stream); the application
     * reloads them. Live pushes go on.
     */
    _onGap(msg) {
      const offset = typeof msg.offset === "number" ? msg.offset : null;
      const keys = typeof msg.topic === "string"
        ? ["t:" + msg.topic]
        : Array.from(this._joined).filter(userKey);
      for (const key of keys) {
        if (!this._joined.has(key)) continue;
        const pos = this._pos.get(key);
        const info = {
          private: key !== "t:" + msg.topic,
          since: null,
          offset: offset,
          epoch: pos ? pos.epoch : null,
        };
        this._emit("gap", key === "u" ? null : key.slice(2), info);
      }
    }

    _onReply(reply) {
      this._emit("reply", reply);
      const entry = this._pending.get(reply.id);
      if (entry === undefined) return;
      this._pending.delete(reply.id);
      const ok = reply.code >= 20000 && reply.code < 30000;
      if (entry.revoked !== null) {
        this._undo(entry, ok);
        return;
      }
      if (ok && entry.key !== null && this._current(entry)) this._joinedStream(entry, reply);
      if (entry.code === CODE.LOGIN && entry.item === this._login && entry.refresh) {
        // A refresh: refused, the login stays until the edge ends it.
        if (ok && this._loggedIn) this._scheduleRefresh(reply.expires);
      } else if (entry.code === CODE.LOGIN && entry.item === this._login) {
        if (ok) {
          this._setLoggedIn(true);
          this.uid = reply.uid === undefined ? null : reply.uid;
          this._scheduleRefresh(reply.expires);
          for (const [topic, it] of this._private) this._flush(it, CODE.SUBSCRIBE_PRIVATE, topic);
        } else {
          // A refused token is forgotten; log out so that the edge agrees.
          this._token = null;
          this._login = null;
          this._forgetUser();
          this._setLoggedIn(false);
          this.uid = null;
          for (const it of this._private.values()) this._rejectItem(it, "login refused");
          this._send(CODE.LOGOUT, undefined, undefined, null, []);
        }
      }
      if (ok) {
        const value = entry.query ? entry.query.answer(reply) : reply;
        for (const w of entry.waiters) w.resolve(value);
      } else {
        const error = refusal(reply, entry.request);
        if (entry.waiters.length === 0) this._emit("error", error);
        for (const w of entry.waiters) w.reject(error);
      }
    }

    /**
     * The reply to a request the server undid meanwhile (see _revoke):
     * where the edge took it (`ok`), it is undone unless the application
     * asked for the same again since (that request follows this one).
     */
    _undo(entry, ok) {
      for (const w of entry.waiters) w.reject(new Error("gpush: " + entry.revoked));
      if (!ok || !this._isOpen()) return;
      if (entry.code === CODE.LOGIN && this._login === null) {
        this._send(CODE.LOGOUT, undefined, undefined, null, []);
      } else if (entry.code === CODE.SUBSCRIBE && !this._public.has(entry.topic)) {
        this._send(CODE.UNSUBSCRIBE, entry.topic, undefined, null, []);
      } else if (entry.code === CODE.SUBSCRIBE_PRIVATE && !this._private.has(entry.topic)) {
        this._send(CODE.UNSUBSCRIBE_PRIVATE, entry.topic, undefined, null, []);
      }
    }

    // ---- pushes ---------------------------------------------------------

    _onPush(push) {
      // Sent to the previous login, before the edge answered this one.
      if (push.code === CODE.PUSH_PRIVATE && !this._loggedIn) return;
      if (typeof push.offset === "number") {
        const key = streamKey(push.code, push.topic);
        const pos = this._pos.get(key);
        // Already seen (e.g. recovered and live across a reconnect race).
        if (pos && push.offset <= pos.offset) return;
        if (pos) pos.offset = push.offset;
        if (key !== null && userKey(key)) this._userAt(push.offset, pos ? pos.epoch : null);
      }
      const data = pushData(push);
      this._emit("push", push, data);
      let handlers = [];
      if (push.code === CODE.PUSH_PUBLIC) {
        const it = this._public.get(push.topic);
        if (it && it.handler) handlers = [it.handler];
      } else if (push.code === CODE.PUSH_PRIVATE && push.topic !== undefined) {
        const it = this._private.get(push.topic);
        if (it && it.handler) handlers = [it.handler];
      } else if (push.code === CODE.PUSH_PRIVATE) {
        handlers = Array.from(this._user);
      } else if (push.code === CODE.PUSH_EVERYONE) {
        handlers = Array.from(this._everyone);
      }
      for (const handler of handlers) {
        try {
          handler(data, push);
        } catch (e) {
          this._emit("error", e);
        }
      }
    }

    // ---- connection -----------------------------------------------------

    _clearTimer(name) {
      const t = this._timers[name];
      if (t !== null) {
        clearTimeout(t);
        clearInterval(t);
        this._timers[name] = null;
      }
    }

    async _pickUrl() {
      const opts = this.options;
      if (!opts.discover) return {url: opts.url, nodeId: null};
      try {
        return await this._discover();
      } catch (e) {
        if (!opts.url) throw e;
        this._emit("error", e);
        return {url: opts.url, nodeId: null};
      }
    }

    /** Asks ingress for the least loaded edge, avoiding one that is draining. */
    async _discover() {
      if (!this._fetch) throw new Error("gpush: discovery needs fetch()");
      const base = this.options.discover.replace(/\/+$/, "");
      const get = async (path) => {
        const response = await this._fetch(base + path, {cache: "no-store"});
        if (!response.ok) throw new Error("gpush: GET " + base + path + " answered " + response.status);
        return response.json();
      };
      const best = await get("/v1/connect");
      if (!this._avoid || best.url !== this._avoid) return {url: best.url, nodeId: best.node_id || null};
      const list = await get("/v1/edges");
      const other = (list.edges || []).find((e) => e.url !== this._avoid);
      return other ? {url: other.url, nodeId: other.node_id || null} : {url: best.url, nodeId: best.node_id || null};
    }

    async _open() {
      const gen = ++this._gen;
      this._clearTimer("retry");
      this._clearTimer("connect");
      this._setState("connecting", {attempt: this._attempt});
      this._timers.connect = setTimeout(() => {
        if (gen !== this._gen) return;
        const ws = this._ws;
        if (ws) this._lost(ws, {code: 4008, reason: "connect timeout", wasClean: false});
        else this._retry(gen, new Error("gpush: discovery timed out"));
      }, this.options.connectTimeout);
      let target;
      try {
        target = await this._pickUrl();
      } catch (e) {
        this._retry(gen, e);
        return;
      }
      if (gen !== this._gen || this._closed) return;
      let ws;
      try {
        ws = new this._WebSocket(target.url);
      } catch (e) {
        this._retry(gen, e);
        return;
      }
      this._ws = ws;
      this.url = target.url;
      this.nodeId = target.nodeId;
      ws.onopen = () => this._opened(ws);
      ws.onmessage = (event) => this._onMessage(ws, event);
      ws.onclose = (event) => this._lost(ws, event);
      ws.onerror = () => {}; // onclose follows with the code
    }

    _opened(ws) {
      if (ws !== this._ws) return;
      this._clearTimer("connect");
      this._attempt = 0;
      this._avoid = null;
      this._setLoggedIn(false);
      this.uid = null;
      this.connects++;
      this._joined.clear();
      this._lastHeard = Date.now();
      this._setState("open", {url: this.url, nodeId: this.nodeId});
      this._emit("open", {url: this.url, nodeId: this.nodeId});
      // Restore: login first (private subscriptions follow its reply), then
      // every public subscription.
      if (this._login !== null) this._sendLogin();
      for (const [topic, it] of this._public) this._flush(it, CODE.SUBSCRIBE, topic);
      // Queries after the subscriptions they may need.
      for (const query of this._queries.splice(0)) this._sendQuery(query);
      this._startKeepalive(ws);
    }

    _onMessage(ws, event) {
      if (ws !== this._ws) return;
      this._lastHeard = Date.now();
      if (typeof event.data !== "string") return; // JSON pushes are text
      if (event.data === "pong") return;
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch (e) {
        this._emit("error", new Error("gpush: not JSON: " + event.data.slice(0, 100)));
        return;
      }
      if (msg === null || typeof msg !== "object") return;
      if (msg.code >= 10001 && msg.code <= 10003) this._onPush(msg);
      else if (msg.code === CODE.LOGIN_ENDED) this._onLoginEnded(msg);
      else if (msg.code === CODE.GAP) this._onGap(msg);
      else if (msg.code === CODE.SERVER_SUBSCRIBED) this._onServerSubscribed(msg);
      else if (msg.code === CODE.SERVER_UNSUBSCRIBED) this._onServerUnsubscribed(msg);
      else if (msg.code === CODE.JOINED || msg.code === CODE.LEFT || msg.code === CODE.PRESENCE_CHANGED) {
        this._onPresence(msg);
      } else if (msg.code >= 20000) this._onReply(msg);
    }

    _startKeepalive(ws) {
      this._clearTimer("ping");
      this._clearTimer("pong");
      this._timers.ping = setInterval(() => {
        if (ws !== this._ws || ws.readyState !== 1) return;
        const sentAt = Date.now();
        try {
          ws.send("ping");
        } catch (e) {
          return;
        }
        this._clearTimer("pong");
        this._timers.pong = setTimeout(() => {
          if (ws === this._ws && this._lastHeard < sentAt) {
            this._lost(ws, {code: KEEPALIVE_CLOSE, reason: "keepalive timeout", wasClean: false});
          }
        }, this.options.pongTimeout);
      }, this.options.pingInterval);
    }

    _detach(ws) {
      ws.onopen = null;
      ws.onmessage = null;
      ws.onclose = null;
      ws.onerror = null;
    }

    /** The connection `ws` is gone (closed by the edge, the network or us). */
    _lost(ws, event) {
      if (ws !== this._ws) return;
      this._ws = null;
      this._detach(ws);
      if (ws.readyState === 0 || ws.readyState === 1) {
        try {
          ws.close(KEEPALIVE_CLOSE, String(event.reason || "").slice(0, 100));
        } catch (e) {
          // Ignore: it is going anyway.
        }
      }
      this._clearTimer("connect");
      this._clearTimer("ping");
      this._clearTimer("pong");
      this._setLoggedIn(false);
      this.uid = null;
      this._joined.clear();
      // The server's subscriptions without `keep` end with the connection.
      this._dropServer(() => true);
      // Unanswered requests: what is still wanted goes to the next
      // connection with its waiters, queries too; the rest is settled
      // with null (or rejected, where the server undid it).
      const queries = [];
      for (const entry of this._pending.values()) {
        if (entry.query) queries.push(entry.query);
        else if (entry.revoked !== null) for (const w of entry.waiters) w.reject(new Error("gpush: " + entry.revoked));
        else if (this._current(entry)) entry.item.waiters.unshift(...entry.waiters);
        else for (const w of entry.waiters) w.resolve(null);
      }
      this._pending.clear();
      this._queries = queries.concat(this._queries);
      const info = {code: event.code, reason: event.reason || ""};
      this._emit("close", info);
      if (this._closed) return;
      if (event.code === SERVER_DISCONNECT) {
        // The server API disconnected the user: closed as by close(); the
        // application decides what comes next.
        this._stop("disconnected by the server" + (info.reason ? ": " + info.reason : ""), info);
        this._emit("disconnected", info);
      } else if (event.code === GOING_AWAY) {
        // Draining edge: go at once (a little jitter spreads the herd),
        // through discovery, to another edge.
        this._avoid = this.url;
        this._attempt = 0;
        this._schedule(Math.random() * this.options.drainJitter, info);
      } else {
        // The edge may be dead (a crash is still listed until its lease
        // runs out): with discovery, prefer another one.
        this._avoid = this.url;
        this._retry(this._gen, null, info);
      }
    }

    /** Waits the next backoff step, then connects again. */
    _retry(gen, error, info) {
      if (gen !== this._gen || this._closed) return;
      this._clearTimer("connect");
      if (error) this._emit("error", error);
      const o = this.options;
      const step = Math.min(o.reconnectMax, o.reconnectInitial * Math.pow(2, this._attempt));
      this._attempt = Math.min(this._attempt + 1, 30);
      // "Equal jitter": half fixed, half random.
      this._schedule(step / 2 + Math.random() * (step / 2), info);
    }

    _schedule(delay, info) {
      this._gen++;
      this._clearTimer("retry");
      this._setState("waiting", Object.assign({delay: Math.round(delay), attempt: this._attempt}, info || {}));
      this._timers.retry = setTimeout(() => {
        this._timers.retry = null;
        if (!this._closed) this._open();
      }, delay);
    }
  }

  GPush.CODE = CODE;
  GPush.DEFAULTS = DEFAULTS;

  root.GPush = GPush;
  if (typeof module === "object" && module && module.exports) module.exports = GPush;
})(typeof self !== "undefined" ? self : this);
