/*
 * fleetguard_auth: fleetguard's enforcement point inside Mosquitto 2.0 (plugin interface version 5).
 *
 * It decides the everyday traffic of devices (certificate clients whose username is the device id)
 * from a hash table, username -> {quarantined, device type, access to the type's topics}:
 *
 *   quarantined                                   -> MOSQ_ERR_ACL_DENIED for everything
 *   devices/<username> or devices/<username>/...  -> allowed (what `pattern readwrite devices/%u/#`
 *                                                    matches; usernames with '+', '#' or '/' defer)
 *   types/<type> or types/<type>/... of its type  -> allowed for the access held (r, w, rw)
 *   $CONTROL/fleetguard/...                       -> only the control user: send on
 *                                                    $CONTROL/fleetguard/v1, read .../v1/response
 *   anything else                                 -> MOSQ_ERR_PLUGIN_DEFER (the next plugin, then the
 *                                                    ACL file, decide; their default is deny)
 *
 * The table changes through commands on $CONTROL/fleetguard/v1 (MOSQ_EVT_CONTROL), accepted from the
 * control user only; the payload is bounded line-based text (see parse_command), validated as a
 * whole before anything changes, and answered on $CONTROL/fleetguard/v1/response with the request's
 * id. A quarantine (or release, or a changed type) kicks the username's connections after the table
 * changed. At start the plugin loads the state file (plugin_opt_state_file), which fleetguard writes
 * atomically before it sends a command; a state file that does not parse fails the plugin's
 * initialisation, so the broker does not start (fail closed).
 *
 * Options: plugin_opt_state_file <path> (required), plugin_opt_control_user <username> (required).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define FG_CONTROL_TOPIC "$CONTROL/fleetguard/v1"
#define FG_RESPONSE_TOPIC "$CONTROL/fleetguard/v1/response"
#define FG_CONTROL_PREFIX "$CONTROL/fleetguard/"
#define FG_STATE_HEADER "fleetguard-auth-state 1"

#define FG_MAX_USER 128       /* fleetguard.inventory.model: device ids are 1-128 characters */
#define FG_MAX_TYPE 128       /* device type ids likewise */
#define FG_MAX_ID 64          /* correlation ids */
#define FG_MAX_LINE 512       /* one command or state line */
#define FG_MAX_COMMANDS 10000 /* per control message */
#define FG_MAX_PAYLOAD (1024 * 1024)
#define FG_MAX_ENTRIES 4000000
#define FG_MAX_STATE_BYTES (512L * 1024 * 1024)

#define FG_READ 1
#define FG_WRITE 2

struct entry {
	struct entry *next;
	uint32_t hash;
	uint8_t quarantined;
	uint8_t access;
	uint16_t user_len;
	uint16_t type_len;
	char user[FG_MAX_USER + 1];
	char type[FG_MAX_TYPE + 1];
};

static mosquitto_plugin_id_t *plugin_id;
static struct entry **buckets;
static size_t bucket_count;
static size_t entry_count;
static char control_user[FG_MAX_USER + 1];

enum verb { V_QUARANTINE, V_RELEASE, V_TYPE, V_UNTYPE, V_GET };

struct command {
	enum verb verb;
	char user[FG_MAX_USER + 1];
	char type[FG_MAX_TYPE + 1];
	uint8_t access;
};

/* -- the table ------------------------------------------------------------------------------ */

static uint32_t hash_of(const char *s, size_t len)
{
	uint32_t h = 2166136261u; /* FNV-1a */
	for(size_t i = 0; i < len; i++){
		h = (h ^ (uint8_t)s[i]) * 16777619u;
	}
	return h;
}

static struct entry *find(const char *user, size_t len, uint32_t h)
{
	struct entry *e;
	if(!buckets) return NULL;
	for(e = buckets[h & (bucket_count - 1)]; e; e = e->next){
		if(e->hash == h && e->user_len == len && !memcmp(e->user, user, len)) return e;
	}
	return NULL;
}

static int grow(void)
{
	size_t count = bucket_count ? bucket_count * 2 : 1024;
	struct entry **fresh = calloc(count, sizeof(*fresh));
	if(!fresh) return MOSQ_ERR_NOMEM;
	for(size_t i = 0; i < bucket_count; i++){
		struct entry *e = buckets[i];
		while(e){
			struct entry *next = e->next;
			e->next = fresh[e->hash & (count - 1)];
			fresh[e->hash & (count - 1)] = e;
			e = next;
		}
	}
	free(buckets);
	buckets = fresh;
	bucket_count = count;
	return MOSQ_ERR_SUCCESS;
}

static struct entry *find_or_add(const char *user)
{
	size_t len = strlen(user);
	uint32_t h = hash_of(user, len);
	struct entry *e = find(user, len, h);
	if(e) return e;
	if(entry_count >= FG_MAX_ENTRIES) return NULL;
	if(entry_count >= bucket_count && grow() != MOSQ_ERR_SUCCESS) return NULL;
	e = calloc(1, sizeof(*e));
	if(!e) return NULL;
	memcpy(e->user, user, len + 1);
	e->user_len = (uint16_t)len;
	e->hash = h;
	e->next = buckets[h & (bucket_count - 1)];
	buckets[h & (bucket_count - 1)] = e;
	entry_count++;
	return e;
}

static void remove_if_plain(struct entry *e)
{
	struct entry **link;
	if(e->quarantined || e->type_len) return;
	for(link = &buckets[e->hash & (bucket_count - 1)]; *link; link = &(*link)->next){
		if(*link == e){
			*link = e->next;
			free(e);
			entry_count--;
			return;
		}
	}
}

static void clear_table(void)
{
	for(size_t i = 0; i < bucket_count; i++){
		struct entry *e = buckets[i];
		while(e){
			struct entry *next = e->next;
			free(e);
			e = next;
		}
	}
	free(buckets);
	buckets = NULL;
	bucket_count = 0;
	entry_count = 0;
}

/* -- the ACL check ---------------------------------------------------------------------------- */

/* Whether topic is prefix itself or lies below it ("prefix" or "prefix/..."). */
static bool within(const char *topic, const char *prefix, size_t len)
{
	return !strncmp(topic, prefix, len) && (topic[len] == '\0' || topic[len] == '/');
}

static int control_access(const char *user, const char *topic, int access)
{
	if(!user || strcmp(user, control_user)) return MOSQ_ERR_ACL_DENIED;
	if(access == MOSQ_ACL_WRITE && !strcmp(topic, FG_CONTROL_TOPIC)) return MOSQ_ERR_SUCCESS;
	if((access & (MOSQ_ACL_READ | MOSQ_ACL_SUBSCRIBE | MOSQ_ACL_UNSUBSCRIBE)) && !strcmp(topic, FG_RESPONSE_TOPIC)){
		return MOSQ_ERR_SUCCESS;
	}
	return MOSQ_ERR_ACL_DENIED;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	const char *user = mosquitto_client_username(ed->client);
	const char *topic = ed->topic;
	size_t len = 0;
	uint32_t h = 2166136261u;
	bool plain = true;
	struct entry *e;

	(void)event;
	(void)userdata;
	if(!topic) return MOSQ_ERR_ACL_DENIED;
	if(topic[0] == '$' && !strncmp(topic, FG_CONTROL_PREFIX, sizeof(FG_CONTROL_PREFIX) - 1)){
		return control_access(user, topic, ed->access);
	}
	if(!user) return MOSQ_ERR_PLUGIN_DEFER;
	for(; user[len]; len++){
		char c = user[len];
		h = (h ^ (uint8_t)c) * 16777619u;
		if(c == '+' || c == '#' || c == '/') plain = false;
	}
	e = find(user, len, h);
	if(e && e->quarantined) return MOSQ_ERR_ACL_DENIED;
	if(ed->access == MOSQ_ACL_UNSUBSCRIBE) return MOSQ_ERR_PLUGIN_DEFER;
	if(plain && !strncmp(topic, "devices/", 8) && within(topic + 8, user, len)) return MOSQ_ERR_SUCCESS;
	if(e && e->type_len && !strncmp(topic, "types/", 6) && within(topic + 6, e->type, e->type_len)){
		int wanted = ed->access == MOSQ_ACL_WRITE ? FG_WRITE : FG_READ;
		if(e->access & wanted) return MOSQ_ERR_SUCCESS;
	}
	return MOSQ_ERR_PLUGIN_DEFER;
}

/* -- parsing ---------------------------------------------------------------------------------- */

static bool valid_user(const char *s)
{
	size_t len = strlen(s);
	if(len == 0 || len > FG_MAX_USER) return false;
	for(size_t i = 0; i < len; i++){
		unsigned char c = (unsigned char)s[i];
		if(c <= 0x20 || c >= 0x7f || c == '+' || c == '#' || c == '/') return false;
	}
	return true;
}

static bool valid_type(const char *s)
{
	size_t len = strlen(s);
	if(len == 0 || len > FG_MAX_TYPE) return false;
	for(size_t i = 0; i < len; i++){
		unsigned char c = (unsigned char)s[i];
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
			|| c == '.' || c == '_' || c == ':' || c == '-';
		if(!ok) return false;
	}
	return true;
}

static int parse_access(const char *s, uint8_t *access)
{
	if(!strcmp(s, "r")){ *access = FG_READ; return 0; }
	if(!strcmp(s, "w")){ *access = FG_WRITE; return 0; }
	if(!strcmp(s, "rw")){ *access = FG_READ | FG_WRITE; return 0; }
	return -1;
}

/* Split a NUL-terminated line (at most FG_MAX_LINE bytes) into at most max words on single spaces. */
static int split(char *line, char **words, int max)
{
	int n = 0;
	char *p = line;
	while(*p){
		if(n == max) return -1;
		words[n++] = p;
		p = strchr(p, ' ');
		if(!p) break;
		*p++ = '\0';
		if(*p == '\0' || *p == ' ') return -1; /* empty word */
	}
	return n;
}

/*
 * A command line:
 *   quarantine <user> | release <user> | untype <user> | get <user> | type <user> <type> <r|w|rw>
 */
static const char *parse_command(char *line, struct command *cmd)
{
	char *w[5];
	int n = split(line, w, 4);
	if(n < 2) return "malformed line";
	if(!valid_user(w[1])) return "invalid username";
	memset(cmd, 0, sizeof(*cmd));
	strcpy(cmd->user, w[1]);
	if(!strcmp(w[0], "type")){
		if(n != 4) return "type takes <user> <type> <r|w|rw>";
		if(!valid_type(w[2])) return "invalid type";
		if(parse_access(w[3], &cmd->access)) return "invalid access";
		strcpy(cmd->type, w[2]);
		cmd->verb = V_TYPE;
		return NULL;
	}
	if(n != 2) return "too many words";
	if(!strcmp(w[0], "quarantine")) cmd->verb = V_QUARANTINE;
	else if(!strcmp(w[0], "release")) cmd->verb = V_RELEASE;
	else if(!strcmp(w[0], "untype")) cmd->verb = V_UNTYPE;
	else if(!strcmp(w[0], "get")) cmd->verb = V_GET;
	else return "unknown command";
	return NULL;
}

/* Copy the next line of buf[*pos..len) into line (NUL-terminated); -1 when too long or NUL inside. */
static int next_line(const char *buf, size_t len, size_t *pos, char *line)
{
	size_t start = *pos, end = start;
	while(end < len && buf[end] != '\n') end++;
	*pos = end < len ? end + 1 : end;
	if(end - start > FG_MAX_LINE) return -1;
	if(end > start && buf[end - 1] == '\r') return -1;
	if(memchr(buf + start, '\0', end - start)) return -1;
	memcpy(line, buf + start, end - start);
	line[end - start] = '\0';
	return 0;
}

static bool valid_id(const char *s)
{
	size_t len = strlen(s);
	if(len == 0 || len > FG_MAX_ID) return false;
	for(size_t i = 0; i < len; i++){
		char c = s[i];
		if(!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-')) return false;
	}
	return true;
}

/* -- applying --------------------------------------------------------------------------------- */

/* Apply one command; return whether the username must be kicked, or -1 when the table is full. */
static int apply(const struct command *cmd)
{
	struct entry *e;
	size_t len = strlen(cmd->user);
	bool kick = false;

	if(cmd->verb == V_GET) return 0;
	e = find(cmd->user, len, hash_of(cmd->user, len));
	if(!e && (cmd->verb == V_RELEASE || cmd->verb == V_UNTYPE)) return 0;
	if(!e) e = find_or_add(cmd->user);
	if(!e) return -1;
	switch(cmd->verb){
		case V_QUARANTINE:
			kick = true; /* even when marked already: a connection must not outlive a quarantine */
			e->quarantined = 1;
			break;
		case V_RELEASE:
			kick = e->quarantined;
			e->quarantined = 0;
			break;
		case V_TYPE:
			kick = e->type_len && (strcmp(e->type, cmd->type) || (e->access & ~cmd->access));
			strcpy(e->type, cmd->type);
			e->type_len = (uint16_t)strlen(cmd->type);
			e->access = cmd->access;
			break;
		case V_UNTYPE:
			kick = e->type_len != 0;
			e->type[0] = '\0';
			e->type_len = 0;
			e->access = 0;
			break;
		case V_GET:
			break;
	}
	remove_if_plain(e);
	return kick ? 1 : 0;
}

static void respond(const char *text, size_t len)
{
	mosquitto_broker_publish_copy(NULL, FG_RESPONSE_TOPIC, (int)len, text, 0, false, NULL);
}

static void respond_error(const char *id, size_t line, const char *why)
{
	char text[FG_MAX_ID + 128];
	int n = snprintf(text, sizeof(text), "id %s\nerror %zu %s\n", id, line, why);
	if(n > 0) respond(text, (size_t)n < sizeof(text) ? (size_t)n : sizeof(text) - 1);
}

static size_t append_state(char *out, size_t room, const char *user)
{
	size_t len = strlen(user);
	struct entry *e = find(user, len, hash_of(user, len));
	const char *access = "-";
	int n;
	if(e && e->access == (FG_READ | FG_WRITE)) access = "rw";
	else if(e && e->access == FG_READ) access = "r";
	else if(e && e->access == FG_WRITE) access = "w";
	n = snprintf(out, room, "state %s %d %s %s\n", user, e && e->quarantined ? 1 : 0, access,
			e && e->type_len ? e->type : "-");
	return n > 0 && (size_t)n < room ? (size_t)n : 0;
}

static int handle_commands(const char *id, struct command *cmds, size_t count)
{
	size_t per = FG_MAX_USER + FG_MAX_TYPE + 32;
	size_t room = FG_MAX_ID + 16 + count * per, used;
	char *out;

	for(size_t i = 0; i < count; i++){
		int kick = apply(&cmds[i]);
		if(kick < 0){
			respond_error(id, i + 2, "table full");
			return MOSQ_ERR_SUCCESS;
		}
		if(kick) mosquitto_kick_client_by_username(cmds[i].user, false);
	}
	out = malloc(room);
	if(!out) return MOSQ_ERR_NOMEM;
	used = (size_t)snprintf(out, room, "id %s\nok\n", id);
	for(size_t i = 0; i < count; i++){
		if(cmds[i].verb == V_GET) used += append_state(out + used, room - used, cmds[i].user);
	}
	respond(out, used);
	free(out);
	return MOSQ_ERR_SUCCESS;
}

static int on_control(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_control *ed = event_data;
	const char *user = mosquitto_client_username(ed->client);
	const char *buf = ed->payload;
	size_t len = ed->payloadlen, pos = 0, line_no = 1, count = 0;
	char line[FG_MAX_LINE + 1], id[FG_MAX_ID + 1] = "-";
	struct command *cmds;
	int rc;

	(void)event;
	(void)userdata;
	if(!user || strcmp(user, control_user)) return MOSQ_ERR_ACL_DENIED;
	if(len > FG_MAX_PAYLOAD || !buf){
		respond_error(id, 0, "payload too large or empty");
		return MOSQ_ERR_SUCCESS;
	}
	if(next_line(buf, len, &pos, line) || strncmp(line, "id ", 3) || !valid_id(line + 3)){
		respond_error(id, 1, "the first line must be id <1-64 letters, digits or '-'>");
		return MOSQ_ERR_SUCCESS;
	}
	strcpy(id, line + 3);
	cmds = malloc(sizeof(*cmds) * FG_MAX_COMMANDS);
	if(!cmds) return MOSQ_ERR_NOMEM;
	while(pos < len){
		const char *why;
		line_no++;
		if(count == FG_MAX_COMMANDS){
			respond_error(id, line_no, "too many commands");
			free(cmds);
			return MOSQ_ERR_SUCCESS;
		}
		if(next_line(buf, len, &pos, line)){
			respond_error(id, line_no, "line too long or with NUL or CR");
			free(cmds);
			return MOSQ_ERR_SUCCESS;
		}
		why = parse_command(line, &cmds[count]);
		if(why){
			respond_error(id, line_no, why);
			free(cmds);
			return MOSQ_ERR_SUCCESS;
		}
		count++;
	}
	if(count == 0){
		respond_error(id, line_no, "no command");
		free(cmds);
		return MOSQ_ERR_SUCCESS;
	}
	rc = handle_commands(id, cmds, count);
	free(cmds);
	return rc;
}

/* -- the state file --------------------------------------------------------------------------- */

/* A state line: device <user> <0|1> <-|r|w|rw> <-|type>; "-" "-" for no type. */
static int load_line(char *line)
{
	char *w[6];
	struct entry *e;
	uint8_t access = 0;
	int n = split(line, w, 5);
	if(n != 5 || strcmp(w[0], "device") || !valid_user(w[1])) return -1;
	if(strcmp(w[2], "0") && strcmp(w[2], "1")) return -1;
	if(strcmp(w[3], "-") ? (parse_access(w[3], &access) || !valid_type(w[4])) : strcmp(w[4], "-")) return -1;
	if(find(w[1], strlen(w[1]), hash_of(w[1], strlen(w[1])))) return -1; /* listed twice */
	e = find_or_add(w[1]);
	if(!e) return -1;
	e->quarantined = w[2][0] == '1';
	if(access){
		strcpy(e->type, w[4]);
		e->type_len = (uint16_t)strlen(w[4]);
		e->access = access;
	}
	remove_if_plain(e);
	return 0;
}

static int load_state(const char *path)
{
	FILE *f = fopen(path, "rb");
	char *buf;
	long size;
	size_t pos = 0, line_no = 0;
	char line[FG_MAX_LINE + 1];

	if(!f){
		mosquitto_log_printf(MOSQ_LOG_ERR, "fleetguard_auth: cannot open state file %s: %s", path, strerror(errno));
		return MOSQ_ERR_UNKNOWN;
	}
	if(fseek(f, 0, SEEK_END) || (size = ftell(f)) < 0 || size > FG_MAX_STATE_BYTES || fseek(f, 0, SEEK_SET)){
		fclose(f);
		mosquitto_log_printf(MOSQ_LOG_ERR, "fleetguard_auth: state file %s unreadable or too large", path);
		return MOSQ_ERR_UNKNOWN;
	}
	buf = malloc((size_t)size + 1);
	if(!buf || fread(buf, 1, (size_t)size, f) != (size_t)size){
		free(buf);
		fclose(f);
		mosquitto_log_printf(MOSQ_LOG_ERR, "fleetguard_auth: cannot read state file %s", path);
		return MOSQ_ERR_UNKNOWN;
	}
	fclose(f);
	if(size == 0 || buf[size - 1] != '\n'){
		free(buf);
		mosquitto_log_printf(MOSQ_LOG_ERR, "fleetguard_auth: state file %s is empty or truncated", path);
		return MOSQ_ERR_UNKNOWN;
	}
	while(pos < (size_t)size){
		line_no++;
		if(next_line(buf, (size_t)size, &pos, line)
				|| (line_no == 1 ? strcmp(line, FG_STATE_HEADER) != 0 : load_line(line) != 0)){
			free(buf);
			clear_table();
			mosquitto_log_printf(MOSQ_LOG_ERR, "fleetguard_auth: state file %s: line %zu is malformed", path, line_no);
			return MOSQ_ERR_UNKNOWN;
		}
	}
	free(buf);
	mosquitto_log_printf(MOSQ_LOG_INFO, "fleetguard_auth: %zu devices loaded from %s", entry_count, path);
	return MOSQ_ERR_SUCCESS;
}

/* -- the plugin interface --------------------------------------------------------------------- */

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	(void)supported_version_count;
	(void)supported_versions;
	return 5;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata, struct mosquitto_opt *options, int option_count)
{
	const char *state_file = NULL;
	int rc;

	*userdata = NULL;
	plugin_id = identifier;
	control_user[0] = '\0';
	for(int i = 0; i < option_count; i++){
		if(!strcmp(options[i].key, "state_file")) state_file = options[i].value;
		else if(!strcmp(options[i].key, "control_user") && options[i].value && strlen(options[i].value) <= FG_MAX_USER){
			strcpy(control_user, options[i].value);
		}
	}
	if(!state_file || !control_user[0]){
		mosquitto_log_printf(MOSQ_LOG_ERR, "fleetguard_auth: plugin_opt_state_file and plugin_opt_control_user are required");
		return MOSQ_ERR_INVAL;
	}
	rc = load_state(state_file);
	if(rc) return rc;
	rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
	if(rc) return rc;
	return mosquitto_callback_register(plugin_id, MOSQ_EVT_CONTROL, on_control, FG_CONTROL_TOPIC, NULL);
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_CONTROL, on_control, FG_CONTROL_TOPIC);
	clear_table();
	return MOSQ_ERR_SUCCESS;
}
