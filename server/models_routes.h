/*
 * models_routes.h — the model lifecycle's routes and triggers
 * (models_routes.c).
 */
#ifndef SRV_MODELS_ROUTES_H
#define SRV_MODELS_ROUTES_H

#include "app.h"

struct srv_req;

/* POST /models/reload: rescans the models dirs; the reply lists what
 * was added, removed, replaced and what failed. */
void srv_route_models_reload(struct srv_req *r);
/* DELETE /models/{name}: unloads a trained model and removes its file
 * (409 for a bundled one, 404 for none). */
void srv_route_model(struct srv_req *r);

/* Loop thread: queues a rescan on a worker unless one is running (SIGHUP,
 * the poll). */
void srv_models_rescan_async(srv_app *app);
/* The metrics collector's part (one scrape at a time): a weight-bytes
 * gauge per served model, the series of models gone hidden. */
void srv_models_collect(srv_app *app);
/* Loop thread: starts the --models-poll-seconds timer (none when 0);
 * -1 when it cannot. */
int srv_models_poll_start(srv_app *app);

#endif
